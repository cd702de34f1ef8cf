"""Where a server's CPU goes while a benchmark level runs: CPU seconds of every process in its tree, grouped by
the role vLLM's process titles name (API frontend, engine core, the main process that manages several frontends),
next to the bench client's own. Divided by the level's wall time they read as cores kept busy: a role near a
whole number of its threads' cores (an engine core at ~1.0 with one busy-looping scheduler thread) is the limit.

    with ProcessCpu(server_pid) as cpu:
        ...  # the measured level
    cpu.report()  # {"wall_s": ..., "roles": {"engine core": {"cores": 0.98, "processes": 1, "threads": 41}, ...}}
"""

from __future__ import annotations

import time

import psutil

# vLLM's set_process_title names ("VLLM::EngineCore", "VLLM::APIServer_0", "VLLM::Worker_TP0": the model's own
# process where the executor is a multiprocess one, as on the CPU; on one GPU it runs inside the engine core).
ROLE_MARKERS = (("EngineCore", "engine core"), ("APIServer", "API frontend"), ("Worker", "engine worker"),
                ("DPCoordinator", "coordinator"))


def role_of(process: psutil.Process, root_pid: int, root_is_frontend: bool) -> str:
    try:
        title = " ".join(process.cmdline()) or process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "other"
    for marker, role in ROLE_MARKERS:
        if marker in title:
            return role
    if process.pid == root_pid:
        return "API frontend" if root_is_frontend else "main"
    return "other"


class ProcessCpu:
    """`root_is_frontend`: the root process serves HTTP itself (one API process) instead of only managing
    frontend processes (several)."""

    def __init__(self, root_pid: int, *, root_is_frontend: bool):
        self.root_pid, self.root_is_frontend = root_pid, root_is_frontend
        self._client = psutil.Process()

    def _tree(self) -> dict[int, psutil.Process]:
        root = psutil.Process(self.root_pid)
        return {process.pid: process for process in [root, *root.children(recursive=True)]}

    @staticmethod
    def _cpu_s(process: psutil.Process) -> float | None:
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        return times.user + times.system

    def __enter__(self) -> ProcessCpu:
        self._processes = self._tree()
        self._before = {pid: self._cpu_s(p) for pid, p in self._processes.items()}
        self._client_before = self._cpu_s(self._client)
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._started
        self._processes.update(self._tree())  # started during the level: counted from 0
        self._after = {pid: self._cpu_s(p) for pid, p in self._processes.items()}
        self._client_after = self._cpu_s(self._client)
        self._threads = {}
        for pid, process in self._processes.items():
            try:
                self._threads[pid] = process.num_threads()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                self._threads[pid] = 0

    def report(self) -> dict:
        roles: dict[str, dict] = {}
        for pid, process in self._processes.items():
            after = self._after.get(pid)
            if after is None:
                continue
            used_s = after - (self._before.get(pid) or 0.0)
            role = roles.setdefault(role_of(process, self.root_pid, self.root_is_frontend),
                                    {"cores": 0.0, "processes": 0, "threads": 0, "busiest_process_cores": 0.0})
            role["cores"] += used_s / self.wall_s
            role["processes"] += 1
            role["threads"] += self._threads.get(pid, 0)
            role["busiest_process_cores"] = max(role["busiest_process_cores"], used_s / self.wall_s)
        client_cores = (self._client_after - self._client_before) / self.wall_s
        return {"wall_s": self.wall_s, "roles": roles, "client_cores": client_cores,
                "machine_cores": psutil.cpu_count()}
