"""Every model family behind the same OpenAI API: the trainer fine-tunes a tiny model of the family, and the
inference service (a real subprocess on vLLM CPU) serves the base and the resulting adapter by name through
the official openai client, and the job's merged 16-bit model loads in vLLM as a base model of its own.
Qwen2-VL goes through this path in test_inference_service.py and the demo; this
module runs the other families. Where vLLM serves no LoRA on a family's vision tower and projector (LLaVA), a
job that trains them says so when it is created, and the service refuses its adapter with a 400 that names
the merged model as the way out."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests import vllm_offline_chat as offline_chat
from trainer_service.domain import JobStatus
from trainer_service.job_spec import Hyperparameters, JobSpec
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from trainer_service.worker.run import run_job
from vlmforge.families import family_for_model_dir
from vlmforge.processes import start, stop, wait_until_ready
from vlmforge.tiny_model.build import FAMILIES as TINY_FAMILIES
from vlmforge.tiny_model.build import model_family_of

pytestmark = pytest.mark.slow

READY = re.compile(rb"inference service listening on (http://127\.0\.0\.1:\d+)")
QUESTION = "What color is the shortest bar?"


def _served_families() -> list:
    """Every tiny family but Qwen2-VL (tested elsewhere); one vLLM cannot serve is skipped for the reason its
    family gives (its jobs and the service's refusal: tests/unit/test_train_only_families.py)."""
    params = []
    for name in TINY_FAMILIES:
        family = model_family_of(name)
        if name != "qwen2_vl":
            skip = () if family.vllm_serves else pytest.mark.skip(reason=family.vllm_unserved_reason)
            params.append(pytest.param(name, marks=skip))
    return params


@pytest.fixture(scope="module", params=_served_families())
def served_family(request, tiny_model_of, family_fine_tune, small_dataset_dir: Path):
    """A running inference service over fine-tunes of the family: the session's shared one (tests/conftest.py;
    tower and projector LoRA where vLLM serves them) and, where vLLM does not, one more with LoRA on every
    layer; and the shared fine-tune's merged model answering in vLLM's offline engine."""
    base_dir = tiny_model_of(request.param)
    state = family_fine_tune.state_dir_of(request.param)
    # The service starts first: it serves the base, and finds each adapter in the artifact store on its first
    # request, so its ~35 s start (mostly single-threaded imports) overlaps the fine-tune and the merged model's
    # own engine start on CI's second core.
    log = state / "inference.log"
    process = start(["-m", "inference_service", "--base-model", str(base_dir), "--served-model-name", "base",
                     "--artifacts-dir", str(state / "artifacts"), "--port", "0", "--max-model-len", "1024",
                     "--vllm-args", "--max-num-seqs 4"], log)
    merged_answer = None
    try:
        shared = family_fine_tune(request.param)
        store, servable = shared.store, shared.job_id
        merged_answer = _start_offline_chat(Path(store.get_job(servable).result["merged_model_path"]),
                                            small_dataset_dir, state / "merged-model-in-vllm.log")
        towers = family_for_model_dir(base_dir).vllm_serves_tower_connector_lora
        every_layer = servable if towers else _fine_tune(store, state, base_dir, small_dataset_dir)
        ready = wait_until_ready(process, log, READY)
    except BaseException:
        stop(process)
        if merged_answer is not None:
            merged_answer.close()
        raise
    try:
        yield ServedFamily(ready.group(1).decode(), store.get_job(servable).result["fine_tuned_model"], store,
                           every_layer, merged_answer)
    finally:
        merged_answer.close()
    assert stop(process) == 0, log.read_text()[-3000:]


@dataclass
class ServedFamily:
    url: str
    adapter_name: str
    store: JobStore
    every_layer_job_id: str
    merged_answer: OfflineChat


class OfflineChat:
    """tests/vllm_offline_chat.py running in its own process: the merged model's answer from vLLM's engine."""

    def __init__(self, process: subprocess.Popen, log: Path):
        self.process, self.log = process, log
        self._stdout: bytes | None = None

    def finish(self, timeout_s: float = 300) -> dict:
        if self._stdout is None:
            try:
                self._stdout, _ = self.process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.close()
        assert self.process.returncode == 0, self.log.read_text()[-3000:]
        return json.loads(self._stdout.strip().splitlines()[-1])

    def close(self) -> None:
        """Ends it, and its engine process, if no test waited for it."""
        if self._stdout is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._stdout, _ = self.process.communicate()


def _start_offline_chat(model_dir: Path, small_dataset_dir: Path, log: Path) -> OfflineChat:
    with open(log, "wb") as stderr:
        process = subprocess.Popen(offline_chat.command(model_dir, _test_image(small_dataset_dir), QUESTION),
                                   stdout=subprocess.PIPE, stderr=stderr, cwd=offline_chat.REPO_ROOT,
                                   start_new_session=True)
    return OfflineChat(process, log)


def _test_image(small_dataset_dir: Path) -> Path:
    return sorted((small_dataset_dir / "images" / "test").glob("*.png"))[0]


def _fine_tune(store: JobStore, state: Path, base_dir: Path, data_dir: Path, **switches) -> str:
    job = JobService(store).create(JobSpec(str(base_dir), str(data_dir / "train.jsonl"),
                                           hyperparameters=Hyperparameters(max_steps=2, batch_size=2, **switches)))
    store.transition(job.id, JobStatus.RUNNING, "running in the test process")
    run_job(store, job.id, state)
    return job.id


def _messages(small_dataset_dir: Path) -> list[dict]:
    png = _test_image(small_dataset_dir).read_bytes()
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
        {"type": "text", "text": QUESTION}]}]


def test_the_merged_model_serves_as_a_base_model(served_family: ServedFamily) -> None:
    """The job's merged 16-bit model, loaded by vLLM's offline engine as a base model of its own."""
    answer = served_family.merged_answer.finish()
    assert answer["prompt_tokens"] > 16, "the prompt holds the image's tokens"
    assert 0 < answer["answer_tokens"] <= 6


def test_the_base_and_the_fine_tuned_adapter_answer_by_name(served_family, small_dataset_dir: Path) -> None:
    url, adapter_name = served_family.url, served_family.adapter_name
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    for model in ("base", adapter_name):  # the adapter is found in the artifact store on its first request
        reply = client.chat.completions.create(model=model, messages=_messages(small_dataset_dir), max_tokens=4,
                                               temperature=0, extra_body={"min_tokens": 4})
        assert reply.model == model and reply.usage.completion_tokens == 4
    assert adapter_name in {m.id for m in client.models.list()}


def test_an_adapter_vllm_cannot_serve_is_announced_then_refused(served_family, small_dataset_dir: Path) -> None:
    url, store, every_layer = served_family.url, served_family.store, served_family.every_layer_job_id
    job = store.get_job(every_layer)
    notes = [e.message for e in store.events_after(every_layer) if e.kind == "deployment"]
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    ask = {"model": job.result["fine_tuned_model"], "messages": _messages(small_dataset_dir), "max_tokens": 2}
    if family_for_model_dir(Path(job.spec["model_dir"])).vllm_serves_tower_connector_lora:
        assert notes == [] and client.chat.completions.create(**ask).usage.completion_tokens >= 1
        return
    assert len(notes) == 1 and "serve its merged model" in notes[0]
    with pytest.raises(openai.BadRequestError, match="serve its merged model instead"):
        client.chat.completions.create(**ask)
    reply = client.chat.completions.create(**{**ask, "model": "base"})  # the engine is unharmed
    assert reply.usage.completion_tokens >= 1
