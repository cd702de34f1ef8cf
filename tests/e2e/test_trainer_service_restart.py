"""The real trainer service as a subprocess: SIGKILL it mid-job, start it again on the same state directory,
and the job finishes once, from its checkpoint, with an event stream that has no gap or duplicate; SIGTERM it
mid-job, and it drains (NOT_SERVING), stops its worker, requeues the job and exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest

from vlmforge.trainer.v1 import trainer_pb2 as pb
from vlmforge.trainer.v1 import trainer_pb2_grpc

pytestmark = pytest.mark.slow


def _start_service(state_dir: Path, *flags: str) -> tuple[subprocess.Popen, int]:
    log = open(state_dir / f"service-{time.monotonic_ns()}.log", "w+b")  # noqa: SIM115 - read below
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer_service", "--grpc-port", "0", "--metrics-port", "0",
         "--state-dir", str(state_dir), "--watch-poll-interval-s", "0.05", *flags],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = re.search(rb"listening on 127\.0\.0\.1:(\d+)", Path(log.name).read_bytes())
        if match:
            return process, int(match.group(1))
        assert process.poll() is None, Path(log.name).read_text()
        time.sleep(0.2)
    raise TimeoutError("trainer did not start")


def _create(client, tiny_model_dir: Path, small_dataset_dir: Path, *, max_steps: int) -> pb.FineTuningJob:
    return client.CreateFineTuningJob(pb.CreateFineTuningJobRequest(
        model=str(tiny_model_dir), training_file=str(small_dataset_dir / "train.jsonl"),
        hyperparameters=pb.Hyperparameters(max_steps=max_steps, batch_size=2, checkpoint_every_steps=2)))


def test_sigkill_of_the_service_mid_job_resumes_after_restart(tiny_model_dir, small_dataset_dir, tmp_path) -> None:
    service, port = _start_service(tmp_path)
    events: list[pb.FineTuningJobEvent] = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = trainer_pb2_grpc.FineTuningServiceStub(channel)
            job = _create(client, tiny_model_dir, small_dataset_dir, max_steps=10)
            for event in client.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id), timeout=240):
                events.append(event)
                if event.HasField("checkpoint") and event.checkpoint.step == 4:
                    break
        os.kill(service.pid, signal.SIGKILL)
        service.wait()

        service, port = _start_service(tmp_path)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = trainer_pb2_grpc.FineTuningServiceStub(channel)
            request = pb.WatchFineTuningJobRequest(id=job.id, after_sequence=events[-1].sequence)
            events += list(client.WatchFineTuningJob(request, timeout=240))
            final = client.GetFineTuningJob(pb.GetFineTuningJobRequest(id=job.id))
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0

    assert final.status == pb.JOB_STATUS_SUCCEEDED, final.error.message
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "no gap, no duplicate"
    steps = [e.progress.step for e in events if e.HasField("progress")]
    assert steps[-1] == 10 and steps.count(1) == 1, "resumed from the checkpoint, never from step 1"
    assert sum(e.HasField("status_changed") and e.status_changed.status == pb.JOB_STATUS_SUCCEEDED
               for e in events) == 1


def test_sigterm_mid_job_reports_not_serving_exits_0_and_leaves_the_job_to_resume(tiny_model_dir, small_dataset_dir,
                                                                                   tmp_path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from trainer_service.domain import JobStatus
    from trainer_service.store import JobStore

    service, port = _start_service(tmp_path, "--drain-timeout-s", "3")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = trainer_pb2_grpc.FineTuningServiceStub(channel)
        job = _create(client, tiny_model_dir, small_dataset_dir, max_steps=10_000)
        for event in client.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id), timeout=240):
            if event.HasField("checkpoint"):
                break
        workers = psutil.Process(service.pid).children(recursive=True)
        assert workers, "the job runs in a worker process"

        service.send_signal(signal.SIGTERM)
        health = health_pb2_grpc.HealthStub(channel)
        statuses = set()
        while service.poll() is None:
            try:
                statuses.add(health.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses, "draining shows in health before exit"
    assert service.returncode == 0
    assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "worker left behind"
    stored = JobStore(tmp_path / "jobs.sqlite3").get_job(job.id)
    assert stored.status is JobStatus.QUEUED, "requeued: the next start resumes it from its checkpoint"
