"""A family vLLM does not serve at all (Llama-3.2-Vision) trains like any other, but says so: its jobs record a
`deployment` event when they are created, and the inference service refuses such a base in one line before it
starts vLLM, as it refuses a base model it cannot find. (Training it end to end: tests/integration.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inference_service.base_model import BaseModelNotServable, check_base_model
from trainer_service.job_spec import Hyperparameters, JobSpec
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from vlmforge.families import QWEN2_VL


def _model_dir(root: Path, model_type: str) -> Path:
    directory = root / f"tiny-{model_type}"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": model_type}))
    return directory


@pytest.mark.parametrize(("model_type", "switches", "said"), [
    ("mllama", {"finetune_vision_layers": False, "finetune_projector": False},
     ["does not serve Llama-3.2-Vision (mllama) models", "encoder-decoder models except Whisper",
      "vLLM PR #24907", "merged_model_path", "in transformers"]),
    ("mllama", {}, ["does not serve Llama-3.2-Vision"]),
    ("llava", {}, ["serves LoRA only on the language model of llava models"]),  # the tower LoRA note, as before
    ("qwen2_vl", {}, None),
    ("gemma3", {}, ["serves LoRA only on the language model of gemma3 models"]),
    ("gemma3", {"finetune_vision_layers": False}, None),  # its projector takes no LoRA: the adapter serves
])
def test_a_job_says_when_created_what_vllm_will_not_serve(model_type: str, switches: dict, said: list[str] | None,
                                                          small_dataset_dir: Path, tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = JobService(store).create(JobSpec(str(_model_dir(tmp_path, model_type)),
                                           str(small_dataset_dir / "train.jsonl"),
                                           hyperparameters=Hyperparameters(**switches)))
    notes = [event.message for event in store.events_after(job.id) if event.kind == "deployment"]
    if said is None:
        assert notes == []
        return
    assert len(notes) == 1 and all(part in notes[0] for part in said), notes


def test_the_inference_service_refuses_a_base_vllm_cannot_serve_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(BaseModelNotServable) as refused:
        check_base_model(_model_dir(tmp_path, "mllama"))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("cannot serve tiny-mllama: vLLM does not serve Llama-3.2-Vision (mllama) models")
    assert "transformers" in message


def test_the_inference_service_starts_on_the_families_vllm_serves(tmp_path: Path) -> None:
    assert check_base_model(_model_dir(tmp_path, "qwen2_vl")) is QWEN2_VL
    assert check_base_model(_model_dir(tmp_path, "paligemma")) is None  # unregistered: not ours to judge, vLLM decides


def test_the_service_command_exits_with_that_line_before_starting_vllm(tmp_path: Path) -> None:
    """The real command line (a subprocess), so the check is known to run before vLLM is imported."""
    started = _start_service(_model_dir(tmp_path, "mllama"))
    assert started.returncode == 1
    assert started.stderr.strip().splitlines() == [
        "inference_service: cannot serve tiny-mllama: vLLM does not serve Llama-3.2-Vision (mllama) models: it "
        "removed its encoder-decoder models except Whisper after 0.10.2 (vLLM PR #24907, \"Remove V0 "
        "Encoder-Decoder Support\"); load it, its adapters (with peft) and its fine-tunes' merged models in "
        "transformers instead"], started.stderr


@pytest.mark.parametrize(("make_base", "said"), [
    (lambda root: root / "no-such-model", "not a model directory, nor a model in the local Hugging Face cache"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "the directory has no config.json"),
])
def test_a_base_model_that_is_not_there_is_refused_in_one_line(make_base, said: str, tmp_path: Path) -> None:
    """Paths only: a hub name not in the cache would make transformers try the network."""
    base = make_base(tmp_path)
    started = _start_service(base)
    assert started.returncode == 1
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"inference_service: base model {base}: ") and said in lines[0]


def _start_service(base_model: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inference_service", "--base-model", str(base_model), "--port", "0"],
                          capture_output=True, text=True, timeout=120, check=False)
