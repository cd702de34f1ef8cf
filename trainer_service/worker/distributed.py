"""One job on several GPUs of one machine. `torchrun --nproc-per-node N -m trainer_service.worker ...` runs the
same worker in N processes: each trains on its own slice of every batch (DDP averages the gradients), and only
rank 0 talks to the job store, evaluates, and writes checkpoints and artifacts. With one process every
method here is a no-op, so the single-GPU and CPU paths are the same code. Without CUDA the processes talk
over gloo, which is how CI runs this path on CPU processes.

Two strategies (`placement.strategy`): DDP keeps a whole copy of the model per process and averages the LoRA
gradients; FSDP (fsdp.py) shards the frozen base and the adapters over the processes, for models that do not fit
one GPU. The training loop is the same for both: it calls `wrap`, and the checkpoint and adapter helpers ask
`shards_model`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch

# Rank 0 evaluates and writes artifacts while the others wait in a collective: give it time.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
Strategy = Literal["ddp", "fsdp"]
# `auto` shards when the bf16 weights take more than this share of one GPU's memory: the rest is for activations
# (checkpointed or not), LoRA gradients and optimizer state, and the CUDA context. A 7B model (15 GB) is DDP on
# an 80 GB GPU; a 72B model (144 GB) is FSDP on any GPU made today.
MAX_WEIGHTS_SHARE_OF_GPU = 0.6


def choose_strategy(requested: str, *, parameter_bytes: int, gpu_memory_bytes: int | None, gpu_count: int) -> Strategy:
    """`placement.strategy` for this job: `ddp` or `fsdp` as asked; `auto` is FSDP when the bf16 weights
    (`parameter_bytes`) do not fit one GPU with room to train, and there are GPUs to shard over (on the CPU,
    `gpu_memory_bytes` None, and in one process `auto` is DDP)."""
    if requested in ("ddp", "fsdp"):
        return requested
    if gpu_count < 2 or gpu_memory_bytes is None:
        return "ddp"
    return "fsdp" if parameter_bytes > MAX_WEIGHTS_SHARE_OF_GPU * gpu_memory_bytes else "ddp"


def bf16_parameter_bytes(model_dir) -> int:
    """The model's weights in bf16, counted from its config on the meta device (nothing is read or allocated)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))
    return 2 * sum(parameter.numel() for parameter in model.parameters())


def gpu_memory_bytes() -> int | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: Strategy = "ddp"

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
    def shards_model(self) -> bool:
        """FSDP across processes: the model is built sharded (fsdp.py), and saving or evaluating it is a
        collective every rank takes part in."""
        return self.distributed and self.strategy == "fsdp"

    @property
    def device(self) -> torch.device:
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
        """DDP around the adapter-carrying model; LoRA weights are the only parameters with gradients. A sharded
        model is already FSDP's from when it was built."""
        if not self.distributed or self.shards_model:
            return model
        device_ids = [self.local_rank] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, value: float) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.item() / self.world_size

    def smallest(self, value: int) -> int:
        """The smallest of every rank's value: what a choice all ranks must make alike is based on (one node's
        GPUs may differ in memory)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
        return int(tensor.item())

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (rank 0 decides cancellation)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()
