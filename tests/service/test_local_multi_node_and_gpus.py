"""The local launcher past one GPU, with real tiny jobs on the CPU (gloo):

- a job with placement.nodes = 2 runs as two torchrun agents on this machine that meet in a c10d rendezvous over
  loopback (as the pods of a multi-node job do across a cluster) and trains to SUCCEEDED through the gRPC API;
- told it has GPUs (`gpus`), the launcher gives each job its own as CUDA_VISIBLE_DEVICES and runs jobs side by
  side while GPUs are free, FIFO otherwise. Workers on the CPU ignore CUDA_VISIBLE_DEVICES, so the jobs are real;
  the test reads the environment each worker process actually got.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.service.test_trainer_jobs_run import service  # noqa: F401 - the in-process trainer (a fixture)
from trainer_service.domain import JobStatus
from trainer_service.job_spec import Hyperparameters, JobSpec, Placement
from trainer_service.jobs import JobService
from trainer_service.launcher import LocalLauncher
from trainer_service.metrics import JobStoreCollector
from trainer_service.store import JobStore
from vlmforge.trainer.v1 import trainer_pb2 as pb

pytestmark = pytest.mark.slow


def test_a_two_node_job_trains_through_two_torchrun_agents_on_loopback(service, tiny_model_dir,  # noqa: F811
                                                                        small_dataset_dir) -> None:
    client, launcher, _ = service
    job = client.CreateFineTuningJob(pb.CreateFineTuningJobRequest(
        model=str(tiny_model_dir), training_file=str(small_dataset_dir / "train.jsonl"),
        hyperparameters=pb.Hyperparameters(learning_rate=1e-3, batch_size=2, max_steps=2, checkpoint_every_steps=1),
        placement=pb.Placement(nodes=2)))
    agents = []
    events = []
    for event in client.WatchFineTuningJob(pb.WatchFineTuningJobRequest(id=job.id), timeout=600):
        events.append(event)
        if event.HasField("progress") and not agents:
            agents = [psutil.Process(pid) for pid in launcher.worker_pids(job.id)]
            agents = [(agent.cmdline(), agent.environ()) for agent in agents]
    final = client.GetFineTuningJob(pb.GetFineTuningJobRequest(id=job.id))
    assert final.status == pb.JOB_STATUS_SUCCEEDED, final.error.message
    assert final.placement.nodes == 2
    assert len(agents) == 2, "one torchrun agent per node"
    # The command line a Kubernetes pod of the job runs (worker.node_agent), the endpoint on loopback.
    endpoints = {next(a for a in cmd if a.startswith("--rdzv-endpoint=")) for cmd, _ in agents}
    assert len(endpoints) == 1 and next(iter(endpoints)).startswith("--rdzv-endpoint=127.0.0.1:")
    assert all(cmd[1:3] == ["-m", "trainer_service.worker.node_agent"] and "--nnodes=2" in cmd
               and "--rdzv-backend=c10d" in cmd and "--nproc-per-node=1" in cmd for cmd, _ in agents)
    assert sorted(env["JOB_COMPLETION_INDEX"] for _, env in agents) == ["0", "1"], "one agent per index"
    progress = [e.progress for e in events if e.HasField("progress")]
    assert [p.step for p in progress] == [1, 2], "rank 0 alone reports, once per step"
    assert progress[-1].epoch == pytest.approx(2 * 2 * 2 / 48), "each step took a batch on each node's process"
    assert any("x 2 processes" in e.message for e in events)
    statuses = [e.status_changed.status for e in events if e.HasField("status_changed")]
    assert statuses.count(pb.JOB_STATUS_RUNNING) == 1, "both agents rendezvoused and ended cleanly at once"


def test_jobs_get_their_own_gpus_side_by_side_and_wait_fifo_for_a_free_one(tiny_model_dir, small_dataset_dir,
                                                                            tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs = JobService(store)
    spec = JobSpec(str(tiny_model_dir), str(small_dataset_dir / "train.jsonl"), placement=Placement(gpu_count=1),
                   hyperparameters=Hyperparameters(max_steps=1, batch_size=2))
    ids = [jobs.create(spec).id for _ in range(3)]
    launcher = LocalLauncher(store, tmp_path, poll_interval_s=0.1, gpus=("0", "1"))
    registry = CollectorRegistry()
    registry.register(JobStoreCollector(store, gpus=launcher.gpus))
    environments: dict[str, str] = {}  # job id -> its worker's CUDA_VISIBLE_DEVICES
    side_by_side, scrape = set(), ""
    launcher.start()
    try:
        deadline = time.monotonic() + 600
        while not all(store.get_job(i).status.is_terminal for i in ids) and time.monotonic() < deadline:
            in_use = launcher.gpus_in_use()
            for job_id in in_use:
                for pid in launcher.worker_pids(job_id):
                    try:
                        environments.setdefault(job_id, psutil.Process(pid).environ()["CUDA_VISIBLE_DEVICES"])
                    except (psutil.NoSuchProcess, KeyError):
                        pass
            if len(in_use) == 2 and not scrape:
                side_by_side = set(in_use)
                scrape = generate_latest(registry).decode()
            assert len(in_use) <= 2, "never more jobs than GPUs"
            time.sleep(0.05)
    finally:
        launcher.stop()
    finals = [store.get_job(i) for i in ids]
    assert all(f.status is JobStatus.SUCCEEDED for f in finals), [(f.status, f.error) for f in finals]

    def assigned(job_id: str) -> list[str]:
        (event,) = [e for e in store.events_after(job_id) if e.kind == "gpu_assignment"]
        return event.payload["gpus"]

    first, second, third = ids
    assert side_by_side == {first, second}, "the two oldest jobs ran at the same time"
    assert sorted(assigned(first) + assigned(second)) == ["0", "1"], "each on a GPU of its own"
    assert {job_id: environments[job_id] for job_id in ids} == {job_id: assigned(job_id)[0] for job_id in ids}
    # The third waited for a free GPU: it started on one of the first two's GPUs, after that job had ended.
    (owner,) = [job_id for job_id in (first, second) if assigned(job_id) == assigned(third)]
    assert _event_time(store, third, "running") >= _event_time(store, owner, "succeeded")
    for job_id in (first, second):
        assert f'vlmforge_trainer_job_gpu{{gpu="{assigned(job_id)[0]}",job_id="{job_id}"}} 1.0' in scrape, scrape
    assert "vlmforge_trainer_gpus 2.0" in scrape and "vlmforge_trainer_gpus_in_use 2.0" in scrape


def _event_time(store: JobStore, job_id: str, status: str) -> float:
    return next(e.created_at for e in store.events_after(job_id)
                if e.kind == "status_changed" and e.payload["status"] == status)
