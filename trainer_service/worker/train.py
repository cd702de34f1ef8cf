"""The LoRA training loop of a job: deterministic batches, checkpoints, progress through a callback."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmforge.chat_format import ChatCollator
from vlmforge.data.types import Conversation

from ..job_spec import Hyperparameters
from .backends import Placement, TrainingBackend
from .checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint
from .distributed import Ranks


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    loss: float
    learning_rate: float
    samples_per_second: float
    eta_seconds: float
    epoch: float
    tokens_per_second: float  # all input tokens (prompt, image and answer), since this process started
    step_seconds: float  # the last optimizer step, data collation included


class Cancelled(Exception):
    """The job was cancelled while training; the worker stops without writing results."""


def total_steps(hyper: Hyperparameters, train_size: int, world_size: int = 1) -> int:
    if hyper.max_steps:
        return hyper.max_steps
    per_epoch = math.ceil(train_size / (hyper.batch_size * hyper.gradient_accumulation_steps * world_size))
    return max(1, per_epoch * hyper.epochs)


def batch_indices(step: int, micro: int, hyper: Hyperparameters, train_size: int, ranks: Ranks = Ranks()) -> list[int]:
    """Which samples a micro-batch takes, from the step alone: a resumed run sees exactly the batches the
    killed one would have (each epoch is a seeded permutation). `batch_size` is per process: with N processes
    a step takes N times as many samples, each rank its own slice."""
    samples_per_step = hyper.batch_size * hyper.gradient_accumulation_steps * ranks.world_size
    start = step * samples_per_step + (micro * ranks.world_size + ranks.rank) * hyper.batch_size
    indices = []
    for position in range(start, start + hyper.batch_size):
        epoch, offset = divmod(position, train_size)
        order = list(range(train_size))
        random.Random(f"{hyper.seed}:{epoch}").shuffle(order)
        indices.append(order[offset])
    return indices


def schedule(hyper: Hyperparameters, steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < hyper.warmup_steps:
            return (step + 1) / hyper.warmup_steps
        progress = (step - hyper.warmup_steps) / max(1, steps - hyper.warmup_steps)
        if hyper.scheduler == "constant":
            return 1.0
        if hyper.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def seed_everything(seed: int) -> None:
    """Before the adapters are made, so their initial weights are the same on every run of a spec."""
    torch.manual_seed(seed)  # CPU and every CUDA device
    random.seed(seed)


def train(peft_model, processor, train_set: list[Conversation], hyper: Hyperparameters, checkpoint_dir: Path,
          backend: TrainingBackend, on_progress: Callable[[Progress], None],
          on_checkpoint: Callable[[int, Path], None], should_stop: Callable[[], bool],
          ranks: Ranks = Ranks()) -> list[float]:
    """Trains `peft_model` in place; returns the loss of every step (averaged over ranks). Resumes from the
    newest checkpoint in `checkpoint_dir` if there is one. Only rank 0 reports and saves checkpoints."""
    placement = backend.placement
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hyper.learning_rate, weight_decay=hyper.weight_decay,
                                  fused=placement.device.type == "cuda")
    steps = total_steps(hyper, len(train_set), ranks.world_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(hyper, steps))
    losses: list[float] = []
    start_step = 0
    resumed = latest_checkpoint(checkpoint_dir)
    if resumed is not None:
        losses = restore_checkpoint(resumed, peft_model, optimizer, scheduler)
        start_step = resumed.step

    collate = ChatCollator(processor, max_length=hyper.max_sequence_length)
    backend.for_training(peft_model)
    model = ranks.wrap(peft_model)
    samples_per_step = hyper.batch_size * hyper.gradient_accumulation_steps * ranks.world_size
    started = time.perf_counter()
    tokens_seen = 0
    for step in range(start_step, steps):
        if ranks.any(should_stop()):
            raise Cancelled()
        step_started = time.perf_counter()
        step_loss = 0.0
        for micro in range(hyper.gradient_accumulation_steps):
            batch = collate([train_set[i] for i in batch_indices(step, micro, hyper, len(train_set), ranks)])
            tokens_seen += int(batch["attention_mask"].sum()) * ranks.world_size  # other ranks: assumed alike
            loss = model(**_to_device(batch, placement)).loss / hyper.gradient_accumulation_steps
            loss.backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_loss = ranks.mean(step_loss)
        losses.append(step_loss)
        done = step + 1
        elapsed = time.perf_counter() - started
        rate = (done - start_step) / elapsed if elapsed > 0 else 0.0
        if not ranks.is_main:
            continue
        on_progress(Progress(
            step=done, total_steps=steps, loss=step_loss, learning_rate=scheduler.get_last_lr()[0],
            samples_per_second=rate * samples_per_step,
            eta_seconds=(steps - done) / rate if rate else 0.0,
            epoch=done * samples_per_step / len(train_set),
            tokens_per_second=tokens_seen / elapsed if elapsed > 0 else 0.0,
            step_seconds=time.perf_counter() - step_started,
        ))
        if done % hyper.checkpoint_every_steps == 0 and done < steps:
            saved = save_checkpoint(checkpoint_dir, done, peft_model, optimizer, scheduler, losses)
            on_checkpoint(done, saved.path)
    return losses


def _to_device(batch: dict[str, torch.Tensor], placement: Placement) -> dict[str, torch.Tensor]:
    """Token ids stay integers; pixels take the model's precision."""
    return {name: value.to(placement.device, dtype=placement.dtype if value.is_floating_point() else None,
                           non_blocking=True)
            for name, value in batch.items()}
