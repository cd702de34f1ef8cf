"""Which queued jobs the local launcher starts now, and on which of its GPUs. Pure functions over plain values,
so the FIFO rules are tested without processes.

Rules: jobs start oldest first. A job takes `gpus per node x nodes` GPUs from the pool, given out lowest id
first; jobs run side by side while the pool has room. A job that does not fit yet waits, and every job behind
it waits too (FIFO: a big job is never starved by small ones that keep slipping past it). A job that asks for
no GPU (the CPU) runs alone on the CPU slot, one at a time. A job asking for more GPUs than the pool has can
never start: it is reported as such, not left queued forever.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Demand:
    """What one queued job needs: `gpus_per_node` GPUs on each of `nodes` torchrun agents (0 GPUs: the CPU)."""

    job_id: str
    gpus_per_node: int
    nodes: int = 1

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True)
class Launch:
    job_id: str
    visible_devices: tuple[tuple[str, ...], ...]  # per agent ("node"), its CUDA_VISIBLE_DEVICES; () on the CPU

    @property
    def gpus(self) -> tuple[str, ...]:
        return tuple(gpu for agent in self.visible_devices for gpu in agent)


@dataclass(frozen=True)
class Plan:
    launches: tuple[Launch, ...]
    never_fits: tuple[tuple[str, str], ...]  # (job id, why): asks for more GPUs than the trainer has


def plan(queued: Sequence[Demand], pool: Sequence[str], busy: set[str], *, cpu_slot_busy: bool) -> Plan:
    """`queued` oldest first; `pool` every GPU the trainer hands out, in order; `busy` those running jobs hold."""
    free = [gpu for gpu in pool if gpu not in busy]
    launches, never_fits = [], []
    for demand in queued:
        if demand.gpus > len(pool):
            never_fits.append((demand.job_id, f"placement asks for {demand.gpus} GPUs ({demand.gpus_per_node} x "
                                              f"{demand.nodes} nodes); this trainer has {len(pool)} (--gpus)"))
            continue
        if demand.gpus == 0:
            if cpu_slot_busy:
                break
            cpu_slot_busy = True
            launches.append(Launch(demand.job_id, ((),) * demand.nodes))
            continue
        if demand.gpus > len(free):
            break  # FIFO: nothing behind it starts before it
        taken, free = free[:demand.gpus], free[demand.gpus:]
        launches.append(Launch(demand.job_id, tuple(
            tuple(taken[node * demand.gpus_per_node:(node + 1) * demand.gpus_per_node])
            for node in range(demand.nodes))))
    return Plan(tuple(launches), tuple(never_fits))


def parse_gpu_list(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """`0,1,2,3` (or GPU UUIDs, as CUDA_VISIBLE_DEVICES takes them) -> ("0", "1", "2", "3"); None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(item) for item in value]
    gpus = tuple(item.strip() for item in items if item.strip())
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"names a GPU twice: {','.join(gpus)}")
    return gpus
