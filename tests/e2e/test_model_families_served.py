"""Every model family behind the same OpenAI API: the trainer fine-tunes a tiny model of the family, and the
inference service (a real subprocess on vLLM CPU) serves the base and the resulting adapter by name through
the official openai client. Qwen2-VL goes through this path in test_inference_service.py and the demo; this
module runs the other families."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import openai
import pytest

from trainer_service.domain import JobStatus
from trainer_service.job_spec import Hyperparameters, JobSpec
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from trainer_service.worker.run import run_job
from vlmforge.processes import start_and_wait, stop

pytestmark = pytest.mark.slow

READY = re.compile(rb"inference service listening on (http://127\.0\.0\.1:\d+)")


@pytest.fixture(scope="module", params=["qwen2_5_vl"])
def served_family(request, small_dataset_dir: Path, tmp_path_factory):
    """(base URL, adapter name) of a running inference service over a fresh fine-tune of the family."""
    base_dir = request.getfixturevalue({"qwen2_5_vl": "tiny_qwen2_5_vl_dir"}[request.param])
    state = tmp_path_factory.mktemp(f"state-{request.param}")
    store = JobStore(state / "jobs.sqlite3")
    job = JobService(store).create(JobSpec(str(base_dir), str(small_dataset_dir / "train.jsonl"),
                                           hyperparameters=Hyperparameters(max_steps=2, batch_size=2)))
    store.transition(job.id, JobStatus.RUNNING, "running in the test process")
    run_job(store, job.id, state)
    adapter_name = store.get_job(job.id).result["fine_tuned_model"]
    log = state / "inference.log"
    process, ready = start_and_wait(
        ["-m", "inference_service", "--base-model", str(base_dir), "--served-model-name", "base",
         "--artifacts-dir", str(state / "artifacts"), "--port", "0", "--max-model-len", "1024",
         "--vllm-args", "--max-num-seqs 4"], log, READY)
    yield ready.group(1).decode(), adapter_name
    assert stop(process) == 0, log.read_text()[-3000:]


def test_the_base_and_the_fine_tuned_adapter_answer_by_name(served_family, small_dataset_dir: Path) -> None:
    url, adapter_name = served_family
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    png = sorted((small_dataset_dir / "images" / "test").glob("*.png"))[0].read_bytes()
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
        {"type": "text", "text": "What color is the shortest bar?"}]}]
    for model in ("base", adapter_name):  # the adapter is found in the artifact store on its first request
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0,
                                               extra_body={"min_tokens": 4})
        assert reply.model == model and reply.usage.completion_tokens == 4
    assert adapter_name in {m.id for m in client.models.list()}
