"""The worker API (JobReportingService) that workers in Kubernetes Jobs report through: a real gRPC server on
port 0 in front of a real SQLite store, the real RemoteJobStore client, and a real worker process that trains
the tiny model while knowing only the API's address, across a restart of the API in the middle of the job."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from trainer_service.domain import JobError, JobStatus
from trainer_service.errors import FailedPreconditionError, JobNotFoundError
from trainer_service.grpc_api.reporting import create_worker_api_server
from trainer_service.job_spec import Hyperparameters, JobSpec
from trainer_service.jobs import JobService
from trainer_service.store import JobStore
from trainer_service.worker.remote_store import WORKER_API_CA_BUNDLE_ENV, WORKER_API_TOKEN_ENV, RemoteJobStore
from tests.pki import Pki
from vlmforge.trainer.v1 import trainer_pb2 as tpb
from vlmforge.trainer.v1 import worker_pb2 as pb
from vlmforge.trainer.v1 import worker_pb2_grpc

TOKEN = "worker-api-test-token"


@pytest.fixture()
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


@pytest.fixture()
def api(store: JobStore):
    server, port = create_worker_api_server(store, "127.0.0.1:0", token=TOKEN)
    yield f"127.0.0.1:{port}"
    server.stop(None)


def _running_job(store: JobStore) -> str:
    job, _ = store.create_job({"model": "m", "training_file": "t.jsonl"}, status=JobStatus.QUEUED)
    store.transition(job.id, JobStatus.RUNNING, "running")
    return job.id


def test_each_call_lands_in_the_store(store: JobStore, api: str) -> None:
    job_id = _running_job(store)
    before = len(store.events_after(job_id))
    remote = RemoteJobStore(api, token=TOKEN, call_timeout_s=10)
    assert remote.get_job(job_id).status is JobStatus.RUNNING
    assert remote.get_job(job_id).spec == {"model": "m", "training_file": "t.jsonl"}
    remote.append_event(job_id, "log", "hello", {"k": 1})
    remote.record_progress(job_id, 3, 10, "step 3/10", {"step": 3, "loss": 0.5})
    remote.merge_result(job_id, {"checkpoints": [{"step": 3, "path": "/x"}]})
    final = remote.transition(job_id, JobStatus.FAILED, "failed: boom", error=JobError("training_failed", "boom"),
                              result={"extra": True})
    assert final.status is JobStatus.FAILED

    stored = store.get_job(job_id)
    assert (stored.trained_steps, stored.total_steps) == (3, 10)
    assert stored.result == {"checkpoints": [{"step": 3, "path": "/x"}], "extra": True}
    assert stored.error == JobError("training_failed", "boom")
    events = store.events_after(job_id)[before:]
    assert [e.kind for e in events] == ["log", "progress", "status_changed"]
    assert events[0].payload == {"k": 1} and events[1].payload == {"step": 3, "loss": 0.5}
    remote.close()


def test_store_errors_come_back_typed(store: JobStore, api: str) -> None:
    remote = RemoteJobStore(api, token=TOKEN, call_timeout_s=10)
    with pytest.raises(JobNotFoundError):
        remote.get_job("ftjob-missing")
    job_id = _running_job(store)
    store.transition(job_id, JobStatus.CANCELLED, "cancelled by the client")
    with pytest.raises(FailedPreconditionError, match="cancelled"):
        remote.transition(job_id, JobStatus.SUCCEEDED, "succeeded")


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_calls_without_the_token_are_unauthenticated(store: JobStore, api: str, token) -> None:
    job_id = _running_job(store)
    before = store.events_after(job_id)
    with pytest.raises(grpc.RpcError) as refused:
        RemoteJobStore(api, token=token, call_timeout_s=10).append_event(job_id, "log", "sneaky")
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert store.events_after(job_id) == before


def test_a_payload_that_is_not_a_json_object_is_invalid_argument(store: JobStore, api: str) -> None:
    job_id = _running_job(store)
    with grpc.insecure_channel(api) as channel:
        stub = worker_pb2_grpc.JobReportingServiceStub(channel)
        for payload in ("{broken", "[1, 2]"):
            with pytest.raises(grpc.RpcError) as refused:
                stub.AppendEvent(pb.AppendEventRequest(job_id=job_id, kind="log", message="m", payload_json=payload),
                                 metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
def test_a_worker_trains_through_the_api_across_a_trainer_restart(tmp_path: Path, tiny_model_dir: Path,
                                                                   small_dataset_dir: Path) -> None:
    """The worker gets an address, not a database path; the API goes away for 3 s mid-job (a trainer
    rollout) and the job still ends SUCCEEDED in one attempt with every step reported once. Over TLS, as in
    Kubernetes with --tls-cert: the worker verifies the API with the CA it is given (plaintext calls are
    covered by the tests above)."""
    store = JobStore(tmp_path / "control-plane" / "jobs.sqlite3")
    job = JobService(store).create(JobSpec(str(tiny_model_dir), str(small_dataset_dir / "train.jsonl"),
                                           hyperparameters=Hyperparameters(max_steps=8, batch_size=2)))
    store.transition(job.id, JobStatus.RUNNING, "running")
    (tmp_path / "pki").mkdir()
    pki = Pki(tmp_path / "pki")
    server, port = create_worker_api_server(store, "127.0.0.1:0", token=TOKEN, tls=pki.server_tls())
    worker_dir = tmp_path / "worker-node"  # checkpoints and artifacts; no job store there
    worker = subprocess.Popen(
        [sys.executable, "-m", "trainer_service.worker", "--trainer-address", f"127.0.0.1:{port}",
         "--job-id", job.id, "--state-dir", str(worker_dir)],
        env={**os.environ, WORKER_API_TOKEN_ENV: TOKEN, WORKER_API_CA_BUNDLE_ENV: str(pki.ca_file)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: store.get_job(job.id).trained_steps >= 2, timeout_s=180)
        server.stop(None)
        time.sleep(3)
        server, _ = create_worker_api_server(store, f"127.0.0.1:{port}", token=TOKEN, tls=pki.server_tls())
        output, _ = worker.communicate(timeout=240)
    finally:
        worker.kill()
        server.stop(None)
    final = store.get_job(job.id)
    assert worker.returncode == 0 and final.status is JobStatus.SUCCEEDED, output.decode()[-3000:]
    progress = [e.payload["step"] for e in store.events_after(job.id) if e.kind == "progress"]
    assert progress == list(range(1, 9))
    assert Path(final.result["adapter_path"]).is_relative_to(worker_dir)
    assert not list(worker_dir.rglob("*.sqlite3"))


def _wait_for(condition, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_retried_report_is_applied_once(store: JobStore, api: str) -> None:
    """gRPC retries a report whose answer was lost (the trainer restarted mid-call): same report id, one event."""
    job_id = _running_job(store)
    before = len(store.events_after(job_id))
    auth = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(api) as channel:
        stub = worker_pb2_grpc.JobReportingServiceStub(channel)
        for _ in range(2):
            stub.RecordProgress(pb.RecordProgressRequest(job_id=job_id, trained_steps=3, total_steps=8, message="s3",
                                                         payload_json='{"step": 3}', report_id="r-1"),
                                metadata=auth, timeout=10)
            stub.AppendEvent(pb.AppendEventRequest(job_id=job_id, kind="log", message="hi", report_id="r-2"),
                             metadata=auth, timeout=10)
            done = stub.TransitionJob(pb.TransitionJobRequest(job_id=job_id, status=tpb.JOB_STATUS_SUCCEEDED,
                                                              message="succeeded", report_id="r-3"),
                                      metadata=auth, timeout=10)
            assert done.status == tpb.JOB_STATUS_SUCCEEDED
    assert [e.kind for e in store.events_after(job_id)[before:]] == ["progress", "log", "status_changed"]
