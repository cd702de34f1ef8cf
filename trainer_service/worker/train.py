"""The LoRA training loop of a job: deterministic batches, checkpoints, progress through a callback."""

from __future__ import annotations

import functools
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlmforge.chat_format import IGNORE_INDEX, ChatCollator
from vlmforge.data.types import Conversation
from vlmforge.families import family_for_model_type

from ..job_spec import Hyperparameters
from .backends import Placement, TrainingBackend
from .checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint
from .distributed import Ranks
from .packing import known_segments, pack_batch, rope_index_of, sample_lengths, use_packed_attention
from .sampling import plan_micro_batches


DATA_WORKERS_PER_GPU = 4


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


def batch_indices(step: int, micro: int, hyper: Hyperparameters, train_size: int, ranks: Ranks = Ranks(),
                  order: Callable[[int], np.ndarray] | None = None) -> list[int]:
    """Which samples a micro-batch takes, from the step alone: a resumed run sees exactly the batches the
    killed one would have (each epoch is a seeded permutation, or `order(epoch)`). `batch_size` is per process:
    with N processes a step takes N times as many samples, each rank its own slice."""
    order = order or functools.partial(epoch_order, hyper.seed, train_size=train_size)
    samples_per_step = hyper.batch_size * hyper.gradient_accumulation_steps * ranks.world_size
    start = step * samples_per_step + (micro * ranks.world_size + ranks.rank) * hyper.batch_size
    indices = []
    for position in range(start, start + hyper.batch_size):
        epoch, offset = divmod(position, train_size)
        indices.append(int(order(epoch)[offset]))
    return indices


@functools.lru_cache(maxsize=4)  # a micro-batch may straddle two epochs; 8 MB an epoch at 1M samples
def epoch_order(seed: int, epoch: int, train_size: int) -> np.ndarray:
    """The epoch's sample order, computed once: a numpy permutation from (seed, epoch) costs ~10 ms at 1M
    samples, where shuffling a Python list for every sample cost seconds per micro-batch."""
    order = np.random.Generator(np.random.PCG64([seed, epoch])).permutation(train_size)
    order.flags.writeable = False  # shared by every caller through the cache
    return order


def schedule(hyper: Hyperparameters, steps: int) -> Callable[[int], float]:
    # warmup_ratio rounds up, as transformers' TrainingArguments.get_warmup_steps does.
    warmup = math.ceil(hyper.warmup_ratio * steps) if hyper.warmup_ratio is not None else hyper.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
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
          ranks: Ranks = Ranks(), after_step: Callable[[int], None] = lambda step: None) -> list[float]:
    """Trains `peft_model` in place; returns the loss of every step (averaged over ranks). Resumes from the
    newest checkpoint in `checkpoint_dir` if there is one. Only rank 0 reports and saves checkpoints."""
    placement = backend.placement
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hyper.learning_rate, weight_decay=hyper.weight_decay,
                                  fused=placement.device.type == "cuda")
    plan = plan_micro_batches(train_set, processor, hyper, ranks.world_size)
    steps = plan.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(hyper, steps))
    losses: list[float] = []
    start_step = 0
    resumed = latest_checkpoint(checkpoint_dir)
    if resumed is not None:
        losses = restore_checkpoint(resumed, peft_model, optimizer, scheduler, ranks)
        start_step = resumed.step

    rope_index = None
    if hyper.packing:  # first: it sets every sub-model's attention, and for_training then gives the vision its own
        use_packed_attention(peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model)
        rope_index = rope_index_of(peft_model)
    backend.for_training(peft_model)
    model = ranks.wrap(peft_model)
    collate = ChatCollator(processor, family=family_for_model_type(peft_model.config.model_type),
                           max_length=hyper.max_sequence_length)
    batches = iter(_batch_loader(train_set, collate, plan, hyper, start_step, steps, placement, ranks))
    started = time.perf_counter()
    tokens_seen = 0
    for step in range(start_step, steps):
        if ranks.any(should_stop()):
            raise Cancelled()
        step_started = time.perf_counter()
        step_loss = 0.0
        micro_batches = [next(batches) for _ in range(hyper.gradient_accumulation_steps)]
        tokens_seen += sum(int(b["attention_mask"].sum()) for b in micro_batches) * ranks.world_size  # (alike)
        if rope_index is not None:
            micro_batches = [pack_batch(b, rope_index) for b in micro_batches]
        # The step's loss is the mean over all its answer tokens (every micro-batch and rank), as one batch
        # would give: packed rows and padded batches of the same samples then train alike.
        answer_tokens = max(1.0, ranks.mean(float(sum(_answer_tokens(b) for b in micro_batches))))
        for batch in micro_batches:
            lengths = sample_lengths(batch)
            batch = _to_device(batch, placement)
            with known_segments(batch, lengths):
                with backend.compute_precision():
                    if backend.fused_loss:
                        loss = model(**batch).loss / hyper.gradient_accumulation_steps
                    else:
                        loss = answer_only_loss(model, batch, answer_tokens=answer_tokens)
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
        if ranks.is_main:
            samples_done = plan.samples_before(done)
            on_progress(Progress(
                step=done, total_steps=steps, loss=step_loss, learning_rate=scheduler.get_last_lr()[0],
                samples_per_second=(samples_done - plan.samples_before(start_step)) / elapsed if elapsed else 0.0,
                eta_seconds=(steps - done) / rate if rate else 0.0,
                epoch=samples_done / len(train_set),
                tokens_per_second=tokens_seen / elapsed if elapsed > 0 else 0.0,
                step_seconds=time.perf_counter() - step_started,
            ))
        after_step(done)  # on every rank (a sharded model's validation is a collective)
        if done % hyper.checkpoint_every_steps == 0 and done < steps:  # a collective when the model is sharded
            saved = save_checkpoint(checkpoint_dir, done, peft_model, optimizer, scheduler, losses, ranks)
            if ranks.is_main:
                on_checkpoint(done, saved.path)
    return losses


class _StepBatches(torch.utils.data.Sampler):
    """Each micro-batch's sample indices in training order from `start_step` (see batch_indices)."""

    def __init__(self, plan, hyper: Hyperparameters, start_step: int, steps: int, ranks: Ranks):
        self.plan, self.hyper, self.start_step, self.steps, self.ranks = plan, hyper, start_step, steps, ranks

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            for micro in range(self.hyper.gradient_accumulation_steps):
                yield self.plan.indices(step, micro, self.ranks)

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.hyper.gradient_accumulation_steps


def _batch_loader(train_set, collate, plan, hyper: Hyperparameters, start_step: int, steps: int,
                  placement: Placement, ranks: Ranks) -> torch.utils.data.DataLoader:
    """On a GPU, worker processes decode and collate the next batches while the GPU trains on this one (inline,
    collation took a third of a 2B step on an H100); on the CPU they would only compete with training."""
    workers = 0
    if placement.device.type == "cuda":
        workers = max(0, min(DATA_WORKERS_PER_GPU, (os.cpu_count() or 1) // ranks.world_size - 1))
    return torch.utils.data.DataLoader(
        train_set, batch_sampler=_StepBatches(plan, hyper, start_step, steps, ranks), collate_fn=collate,
        num_workers=workers, pin_memory=placement.device.type == "cuda", prefetch_factor=4 if workers else None)


def answer_only_loss(model, batch: dict[str, torch.Tensor], answer_tokens: float | None = None) -> torch.Tensor:
    """The same mean token cross-entropy as `model(**batch).loss`, but the LM head only runs where some row has
    a label: the answer tokens. With a 152k vocabulary the full logits of image and prompt tokens cost a tenth
    of a 2B model's step and GiBs of memory, and the loss never reads them. With `answer_tokens`: the sum of
    the batch's token losses divided by it (the step's answer tokens per rank), instead of their mean."""
    labels = batch["labels"]
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # position p predicts p + 1
    positions = (shifted != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    logits = model(**inputs, logits_to_keep=positions, use_cache=False).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), shifted[:, positions].flatten(),
                                             ignore_index=IGNORE_INDEX, reduction="mean" if answer_tokens is None
                                             else "sum")
    return loss if answer_tokens is None else loss / answer_tokens


def _answer_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens `answer_only_loss` scores: every labelled position but a row's first (nothing predicts it)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _to_device(batch: dict[str, torch.Tensor], placement: Placement) -> dict[str, torch.Tensor]:
    """Token ids stay integers; pixels take the model's precision."""
    return {name: value.to(placement.device, dtype=placement.dtype if value.is_floating_point() else None,
                           non_blocking=True)
            for name, value in batch.items()}
