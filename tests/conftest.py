"""Session-wide fixtures: a small generated dataset and a quickly built tiny model (a few pre-training steps:
these tests check that the artifacts load and run everywhere, not how well the model answers)."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from vlmforge.datagen import DatasetSpec
from vlmforge.tiny_model.spec import TinyModelSpec

# Nothing may be downloaded at run time: make any accidental hub lookup fail fast instead of reaching out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# vLLM's CPU backend reserves 15% of RAM (3.5 GiB on CI) for each engine's KV cache, and refuses to start when
# that much is not free; the tiny models need a few MiB. A fixed 1 GiB (vLLM's VLLM_CPU_KVCACHE_SPACE, in GiB)
# lets the tests start two engines side by side (tests/e2e/) without running the 24 GiB machine short.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

SMALL_DATASET = DatasetSpec(train_images=48, validation_images=8, test_images=8, pretrain_images=48)
QUICK_MODEL = dataclasses.replace(TinyModelSpec(), pretrain_steps=4, pretrain_warmup_steps=2, dataset=SMALL_DATASET)


@pytest.fixture(scope="session")
def small_dataset_dir(tmp_path_factory) -> Path:
    from vlmforge.datagen import build_dataset

    return build_dataset(tmp_path_factory.mktemp("embedded") / "data", SMALL_DATASET, workers=2)


@pytest.fixture(scope="session")
def tiny_model_dir(small_dataset_dir: Path) -> Path:
    from vlmforge.tiny_model.build import build_tiny_model

    return build_tiny_model(small_dataset_dir.parent / "tiny-qwen2-vl", small_dataset_dir, QUICK_MODEL)


@pytest.fixture(scope="session")
def tiny_model_of(small_dataset_dir: Path, tiny_model_dir: Path) -> Callable[[str], Path]:
    """The quick recipe in any family's layout (vlmforge.tiny_model.build.FAMILIES), built once a session."""
    from vlmforge.tiny_model.build import build_tiny_model

    @functools.cache
    def build(family: str) -> Path:
        if family == QUICK_MODEL.family:
            return tiny_model_dir
        return build_tiny_model(small_dataset_dir.parent / f"tiny-{family}", small_dataset_dir,
                                dataclasses.replace(QUICK_MODEL, family=family))

    return build


@dataclasses.dataclass(frozen=True)
class FamilyFineTune:
    """A finished trainer job on a tiny family model: its store and state directory (artifacts under
    `state_dir / "artifacts"`), its id, and the fine-tunes the worker pushed to the inference service."""

    store: object
    state_dir: Path
    job_id: str
    pushed: tuple[str, ...]


@pytest.fixture(scope="session")
def family_fine_tune(tiny_model_of, small_dataset_dir: Path, tmp_path_factory) -> Callable[[str], FamilyFineTune]:
    """One fine-tune per family a session, shared by the artifact tests and the served-family tests (a job with
    evaluation before and after costs 10-30 s on CI's CPU; training it once per module doubled that). LoRA on
    the vision tower and projector where the adapter still serves them: in vLLM where it takes them, in
    transformers (any LoRA) for a family vLLM does not serve; else the language model only."""
    from trainer_service.domain import JobStatus
    from trainer_service.job_spec import Hyperparameters, JobSpec
    from trainer_service.jobs import JobService
    from trainer_service.store import JobStore
    from trainer_service.worker.run import run_job
    from vlmforge.families import family_for_model_dir

    class PushRecorder:  # stands in for the InferenceNotifier: which fine-tunes the worker pushes
        def __init__(self):
            self.pushed: list[str] = []

        def notify(self, job_id: str, name: str) -> bool:
            self.pushed.append(name)
            return True

    @functools.cache
    def state_dir_of(family_name: str) -> Path:
        """Known before the job runs, so a service can start on its artifact store while it trains."""
        state = tmp_path_factory.mktemp(f"fine-tune-{family_name}")
        (state / "artifacts").mkdir()
        return state

    @functools.cache
    def fine_tune(family_name: str) -> FamilyFineTune:
        base_dir = tiny_model_of(family_name)
        family = family_for_model_dir(base_dir)
        towers = family.vllm_serves_tower_connector_lora or not family.vllm_serves
        state = state_dir_of(family_name)
        store = JobStore(state / "jobs.sqlite3")
        spec = JobSpec(str(base_dir), str(small_dataset_dir / "train.jsonl"), hyperparameters=Hyperparameters(
            max_steps=3, batch_size=2, learning_rate=1e-3, finetune_vision_layers=towers, finetune_projector=towers))
        job = JobService(store).create(spec)
        store.transition(job.id, JobStatus.RUNNING, "running in the test process")
        recorder = PushRecorder()
        run_job(store, job.id, state, notifier=recorder)
        return FamilyFineTune(store, state, job.id, tuple(recorder.pushed))

    fine_tune.state_dir_of = state_dir_of
    return fine_tune
