"""Where jobs run. The local launcher runs one job at a time (one slot: the CPU, or `gpus_per_job` GPUs through
torchrun), FIFO; a Kubernetes launcher will implement the same two methods."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Protocol

from .domain import JobError, JobStatus
from .job_spec import JobSpec
from .store import JobStore

logger = logging.getLogger(__name__)


SERVICE_PID_ENV = "VLMFORGE_TRAINER_SERVICE_PID"  # workers stop when this process is gone


def worker_command(job_id: str, state_dir: Path, artifacts_dir: Path, gpus: int, *, database: Path | None = None,
                   trainer_address: str | None = None, python: str = sys.executable) -> list[str]:
    """The worker's command line: one process, or torchrun with one process per GPU (DDP) when gpus > 1. It
    reports into the SQLite file (`database`, same machine) or through the worker API (`trainer_address`)."""
    store = ["--database", str(database)] if database else ["--trainer-address", str(trainer_address)]
    worker = ["-m", "trainer_service.worker", *store, "--job-id", job_id, "--state-dir", str(state_dir),
              "--artifacts-dir", str(artifacts_dir)]
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *worker]
    return [python, *worker]


class Launcher(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


class LocalLauncher:
    def __init__(self, store: JobStore, state_dir: Path, *, artifacts_dir: Path | None = None,
                 worker_env: dict[str, str] | None = None, gpus_per_job: int = 1, poll_interval_s: float = 0.5,
                 max_attempts: int = 10, cancel_grace_s: float = 5.0, worker_niceness: int = 10):
        self.store = store
        self.state_dir = Path(state_dir)
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else self.state_dir / "artifacts"
        self.worker_env = {**(worker_env or {}), SERVICE_PID_ENV: str(os.getpid())}
        self.gpus_per_job = gpus_per_job
        self.poll_interval_s = poll_interval_s
        self.max_attempts = max_attempts
        self.cancel_grace_s = cancel_grace_s
        self.worker_niceness = worker_niceness
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-launcher", daemon=True)
        self._process: subprocess.Popen | None = None
        self._job_id: str | None = None
        self._attempts: dict[str, int] = {}

    @property
    def current_worker_pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        # Jobs left RUNNING by a previous service process have no worker any more: resume them.
        for job in self.store.list_jobs([JobStatus.RUNNING], page_size=1000)[0]:
            self.store.transition(job.id, JobStatus.QUEUED, "service restarted; resuming from the last checkpoint")
        self._thread.start()

    def stop(self) -> None:
        """Stops the worker (its job is requeued and resumes from its checkpoint on the next start)."""
        self._stopping.set()
        self._thread.join()
        if self._process is not None:
            self._end_worker()
            self._requeue_if_running("service stopped; will resume from the last checkpoint")

    def _loop(self) -> None:
        while not self._stopping.wait(self.poll_interval_s):
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the launcher must outlive one bad poll; the log has the details
                logger.exception("launcher poll failed")

    def _tick(self) -> None:
        if self._process is None:
            job = self.store.next_queued()
            if job is not None:
                self._launch(job.id, JobSpec.from_json(job.spec).placement.gpu_count or self.gpus_per_job)
            return
        exit_code = self._process.poll()
        status = self.store.get_job(self._job_id).status
        if exit_code is None:
            if status is JobStatus.CANCELLED:
                self._end_worker()
                self._process = None
            return
        self._process = None
        if status is JobStatus.RUNNING:  # the worker died without finishing the job
            self._attempts[self._job_id] = self._attempts.get(self._job_id, 0) + 1
            if self._attempts[self._job_id] >= self.max_attempts:
                self.store.transition(self._job_id, JobStatus.FAILED, "worker kept dying", error=JobError(
                    "worker_died", f"the worker exited with code {exit_code} {self.max_attempts} times"))
            else:
                self._requeue_if_running(f"worker exited with code {exit_code}; resuming from the last checkpoint")

    def _launch(self, job_id: str, gpus: int) -> None:
        self.store.transition(job_id, JobStatus.RUNNING, "running")
        command = worker_command(job_id, self.state_dir, self.artifacts_dir, gpus, database=self.store.path)
        log = open(self.state_dir / f"worker-{job_id}.log", "ab")  # noqa: SIM115 - handed to the child
        self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.worker_env})
        # Niced: training takes every core it can get, and the API on the same machine must still answer at once.
        # Set from here, not in the child (preexec_fn is unsafe in a threaded process); torchrun's ranks, started
        # a moment later, inherit it.
        with contextlib.suppress(ProcessLookupError):  # it already ended: the next poll sees how
            os.setpriority(os.PRIO_PROCESS, self._process.pid,
                           os.getpriority(os.PRIO_PROCESS, 0) + self.worker_niceness)
        log.close()
        self._job_id = job_id
        logger.info("job %s: worker pid %d", job_id, self._process.pid)

    def _end_worker(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(self.cancel_grace_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _requeue_if_running(self, message: str) -> None:
        if self.store.get_job(self._job_id).status is JobStatus.RUNNING:
            self.store.transition(self._job_id, JobStatus.QUEUED, message)
