"""Where jobs run. The local launcher runs jobs as worker processes on this machine. Without a GPU list it runs
one job at a time (the CPU, or `gpus_per_job` GPUs through torchrun), FIFO. With one (`gpus`, e.g. the GPUs of
an 8-GPU node) each job gets the GPUs its placement asks for as its CUDA_VISIBLE_DEVICES, and jobs run side by
side while free GPUs remain, FIFO otherwise (gpu_scheduling.py). A job with placement.nodes > 1 runs as that
many torchrun agents on this machine that meet in a c10d rendezvous over loopback, as pods of a multi-node job
do across a cluster. The Kubernetes launcher implements the same two methods."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .domain import JobError, JobStatus
from .gpu_scheduling import Demand, Launch, plan
from .job_spec import JobSpec
from .store import JobStore
from .worker.node_agent import COMPLETION_INDEX_ENV, POD_IP_ENV

logger = logging.getLogger(__name__)


SERVICE_PID_ENV = "VLMFORGE_TRAINER_SERVICE_PID"  # workers stop when this process is gone
RENDEZVOUS_PORT = 29500  # torchrun's default; a Kubernetes multi-node job's pod 0 serves the rendezvous there


@dataclass(frozen=True)
class Rendezvous:
    """How the torchrun agents of a multi-node job find each other (c10d: agent 0 serves the store). Every agent
    runs one command line: worker.node_agent adds what differs per agent (is_host, --local-addr) from the
    environment, as each pod of an Indexed Job has it."""

    endpoint: str  # host:port of agent 0, which serves the rendezvous store
    max_restarts: int = 0  # membership changes (a replaced pod) the agents ride out by restarting their workers


def worker_command(job_id: str, state_dir: Path, artifacts_dir: Path, gpus: int, *, database: Path | None = None,
                   trainer_address: str | None = None, python: str = sys.executable, nodes: int = 1,
                   rendezvous: Rendezvous | None = None) -> list[str]:
    """The worker's command line: one process, torchrun with one process per GPU (DDP) when gpus > 1, or one
    torchrun agent of `nodes` meeting at `rendezvous` (gpus processes each). It reports into the SQLite file
    (`database`, same machine) or through the worker API (`trainer_address`)."""
    store = ["--database", str(database)] if database else ["--trainer-address", str(trainer_address)]
    worker = ["-m", "trainer_service.worker", *store, "--job-id", job_id, "--state-dir", str(state_dir),
              "--artifacts-dir", str(artifacts_dir)]
    if nodes > 1:
        if rendezvous is None:
            raise ValueError("a multi-node job needs a rendezvous")
        agent = [f"--nnodes={nodes}", f"--nproc-per-node={max(gpus, 1)}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={rendezvous.endpoint}", f"--rdzv-id={job_id}",
                 f"--max-restarts={rendezvous.max_restarts}"]
        return [python, "-m", "trainer_service.worker.node_agent", *agent, *worker]
    if gpus > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", *worker]
    return [python, *worker]


class Launcher(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class _Run:
    """A running job: one process per torchrun agent ("node"), and the GPUs it holds."""

    job_id: str
    launch: Launch
    agents: list[subprocess.Popen] = field(default_factory=list)


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process may hand out: its own CUDA_VISIBLE_DEVICES when set (so a trainer confined to some
    GPUs confines its jobs to them too), else every GPU torch sees; () without CUDA."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        return tuple(gpu.strip() for gpu in inherited.split(",") if gpu.strip())
    import torch

    return tuple(str(index) for index in range(torch.cuda.device_count())) if torch.cuda.is_available() else ()


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class LocalLauncher:
    def __init__(self, store: JobStore, state_dir: Path, *, artifacts_dir: Path | None = None,
                 worker_env: dict[str, str] | None = None, gpus_per_job: int = 1, gpus: Sequence[str] = (),
                 poll_interval_s: float = 0.5, max_attempts: int = 10, cancel_grace_s: float = 5.0,
                 worker_niceness: int = 10, rendezvous_host: str = "127.0.0.1"):
        self.store = store
        self.state_dir = Path(state_dir)
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else self.state_dir / "artifacts"
        self.worker_env = {**(worker_env or {}), SERVICE_PID_ENV: str(os.getpid())}
        self.gpus_per_job = gpus_per_job
        self.gpus = tuple(gpus)  # empty: no GPU list, one job at a time with CUDA_VISIBLE_DEVICES left alone
        self.poll_interval_s = poll_interval_s
        self.max_attempts = max_attempts
        self.cancel_grace_s = cancel_grace_s
        self.worker_niceness = worker_niceness
        self.rendezvous_host = rendezvous_host
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="local-launcher", daemon=True)
        self._lock = threading.Lock()  # _runs is read by the metrics / tests while the loop changes it
        self._runs: dict[str, _Run] = {}  # job id -> its run, oldest first
        self._attempts: dict[str, int] = {}

    @property
    def current_worker_pid(self) -> int | None:
        """The first agent of the oldest running job (with one job at a time: the worker)."""
        with self._lock:
            run = next(iter(self._runs.values()), None)
        return run.agents[0].pid if run and run.agents else None

    def worker_pids(self, job_id: str) -> list[int]:
        """The pids of a running job's torchrun agents (one per node) or its single worker."""
        with self._lock:
            run = self._runs.get(job_id)
        return [agent.pid for agent in run.agents] if run else []

    def gpus_in_use(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return {job_id: run.launch.gpus for job_id, run in self._runs.items()}

    def start(self) -> None:
        # Jobs left RUNNING by a previous service process have no worker any more: resume them.
        for job in self.store.list_jobs([JobStatus.RUNNING], page_size=1000)[0]:
            self.store.transition(job.id, JobStatus.QUEUED, "service restarted; resuming from the last checkpoint")
        self._thread.start()

    def stop(self) -> None:
        """Stops the workers (their jobs are requeued and resume from their checkpoints on the next start)."""
        self._stopping.set()
        self._thread.join()
        for run in list(self._runs.values()):
            self._end(run)
            self._requeue_if_running(run.job_id, "service stopped; will resume from the last checkpoint")

    def _loop(self) -> None:
        while not self._stopping.wait(self.poll_interval_s):
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the launcher must outlive one bad poll; the log has the details
                logger.exception("launcher poll failed")

    def _tick(self) -> None:
        for run in list(self._runs.values()):
            self._check(run)
        self._start_queued()

    def _check(self, run: _Run) -> None:
        codes = [agent.poll() for agent in run.agents]
        codes += [1] * (len(run.launch.visible_devices) - len(run.agents))  # agents that failed to start
        status = self.store.get_job(run.job_id).status
        if status is JobStatus.CANCELLED:
            self._end(run)
            return
        if any(code is None for code in codes):
            # One agent of a multi-node job failed: the others would wait in a collective for it; end them all
            # and relaunch the job together (the next attempt resumes from the checkpoint).
            if not any(code not in (None, 0) for code in codes):
                return
            self._end(run)
        else:
            self._forget(run)
        if status is JobStatus.RUNNING:  # the worker died without finishing the job
            exit_code = next((code for code in codes if code not in (None, 0)), codes[0])
            attempts = self._attempts[run.job_id] = self._attempts.get(run.job_id, 0) + 1
            if attempts >= self.max_attempts:
                self.store.transition(run.job_id, JobStatus.FAILED, "worker kept dying", error=JobError(
                    "worker_died", f"the worker exited with code {exit_code} {self.max_attempts} times"))
            else:
                self._requeue_if_running(run.job_id, f"worker exited with code {exit_code}; resuming from the "
                                                     "last checkpoint")

    def _start_queued(self) -> None:
        if not self.gpus:  # one job at a time, however many GPUs it asks for (the machine's default devices)
            if not self._runs and (job := self.store.next_queued()) is not None:
                placement = JobSpec.from_json(job.spec).placement
                gpus = placement.gpu_count or self.gpus_per_job
                self._launch(Launch(job.id, ((),) * placement.node_count), gpus_per_node=gpus)
            return
        queued = list(reversed(self.store.list_jobs([JobStatus.QUEUED], page_size=1000)[0]))  # oldest first
        demands = [self._demand(job.id, job.spec) for job in queued]
        with self._lock:
            busy = {gpu for run in self._runs.values() for gpu in run.launch.gpus}
            cpu_busy = any(not run.launch.gpus for run in self._runs.values())
        decided = plan(demands, self.gpus, busy, cpu_slot_busy=cpu_busy)
        for job_id, why in decided.never_fits:
            self.store.transition(job_id, JobStatus.FAILED, f"failed: {why}", error=JobError("not_enough_gpus", why))
        per_node = {demand.job_id: demand.gpus_per_node for demand in demands}
        for launch in decided.launches:
            self._launch(launch, gpus_per_node=per_node[launch.job_id])

    def _demand(self, job_id: str, spec: dict) -> Demand:
        placement = JobSpec.from_json(spec).placement
        return Demand(job_id, placement.gpu_count or self.gpus_per_job, placement.node_count)

    def _launch(self, launch: Launch, *, gpus_per_node: int) -> None:
        job_id, nodes = launch.job_id, len(launch.visible_devices)
        self.store.transition(job_id, JobStatus.RUNNING, "running" if nodes == 1 else f"running on {nodes} "
                              "torchrun agents (nodes) of this machine, c10d rendezvous over loopback")
        if launch.gpus:
            per_agent = [",".join(devices) for devices in launch.visible_devices]
            where = f"={per_agent[0]}" if nodes == 1 else f" per agent: {' | '.join(per_agent)}"
            self.store.append_event(job_id, "gpu_assignment", f"GPUs {','.join(launch.gpus)} (CUDA_VISIBLE_DEVICES"
                                    f"{where})", {"gpus": list(launch.gpus), "visible_devices": per_agent})
        endpoint = f"{self.rendezvous_host}:{_free_port(self.rendezvous_host)}" if nodes > 1 else None
        run = _Run(job_id, launch)
        log = open(self.state_dir / f"worker-{job_id}.log", "ab")  # noqa: SIM115 - handed to the children
        try:
            for node, devices in enumerate(launch.visible_devices):
                # The command line of a Kubernetes pod of the job: worker.node_agent reads the agent's index and
                # address from the environment, as the Job controller and the downward API set them there.
                rendezvous = None if endpoint is None else Rendezvous(endpoint)
                command = worker_command(job_id, self.state_dir, self.artifacts_dir, gpus_per_node,
                                         database=self.store.path, nodes=nodes, rendezvous=rendezvous)
                env = {**os.environ, **self.worker_env}
                if endpoint is not None:
                    env.update({COMPLETION_INDEX_ENV: str(node), POD_IP_ENV: self.rendezvous_host})
                if self.gpus:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)  # "" on the CPU slot: no GPU at all
                run.agents.append(self._spawn(command, log, env))
        finally:
            log.close()
            with self._lock:  # also when a later agent failed to start: the next poll ends the ones that did
                self._runs[job_id] = run
        logger.info("job %s: worker pid(s) %s%s", job_id, ",".join(str(a.pid) for a in run.agents),
                    f" on GPUs {','.join(launch.gpus)}" if launch.gpus else "")

    def _spawn(self, command: list[str], log, env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        # Niced: training takes every core it can get, and the API on the same machine must still answer at once.
        # Set from here, not in the child (preexec_fn is unsafe in a threaded process); torchrun's ranks, started
        # a moment later, inherit it.
        with contextlib.suppress(ProcessLookupError):  # it already ended: the next poll sees how
            os.setpriority(os.PRIO_PROCESS, process.pid, os.getpriority(os.PRIO_PROCESS, 0) + self.worker_niceness)
        return process

    def _end(self, run: _Run) -> None:
        for agent in run.agents:
            if agent.poll() is None:
                agent.terminate()
        for agent in run.agents:
            try:
                agent.wait(self.cancel_grace_s)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        self._forget(run)

    def _forget(self, run: _Run) -> None:
        with self._lock:
            self._runs.pop(run.job_id, None)

    def _requeue_if_running(self, job_id: str, message: str) -> None:
        if self.store.get_job(job_id).status is JobStatus.RUNNING:
            self.store.transition(job_id, JobStatus.QUEUED, message)
