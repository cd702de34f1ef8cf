"""One job on several GPUs of one machine. `torchrun --nproc-per-node N -m trainer_service.worker ...` runs the
same worker in N processes: each trains on its own slice of every batch (DDP averages the gradients), and only
rank 0 talks to the job store, evaluates, and writes checkpoints and artifacts. With one process every
method here is a no-op, so the single-GPU and CPU paths are the same code. Without CUDA the processes talk
over gloo, which is how CI runs this path on CPU processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

# Rank 0 evaluates and writes artifacts while the others wait in a collective: give it time.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Ranks:
        """What torchrun sets; a plain `python -m` start is rank 0 of 1."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def start(self) -> None:
        if not self.distributed:
            return
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)

    def finish(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def wrap(self, model):
        """DDP around the adapter-carrying model; LoRA weights are the only parameters with gradients."""
        if not self.distributed:
            return model
        device_ids = [self.local_rank] if self._device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, value: float) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._device)
        torch.distributed.all_reduce(tensor)
        return tensor.item() / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (rank 0 decides cancellation)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], device=self._device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()
