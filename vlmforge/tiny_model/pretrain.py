"""Full-parameter pre-training of the tiny model on captions and sentence answers, so that LoRA later has
something to adapt (LoRA on a random base barely moves: see the foundation issue's measurements)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..chat_format import ChatCollator
from ..data.types import Conversation
from ..families import family_for_model_type
from .spec import TinyModelSpec


@dataclass
class PretrainResult:
    """Written into the model directory, so nothing here may vary between identical builds (no timings)."""

    steps: int
    first_loss: float
    final_loss: float  # mean of the last 50 steps
    losses_every_50_steps: list[float] = field(default_factory=list)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, floor: float = 0.1) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(model, processor, conversations: list[Conversation], spec: TinyModelSpec) -> PretrainResult:
    collate = ChatCollator(processor, family=family_for_model_type(model.config.model_type))
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_learning_rate, betas=(0.9, 0.98),
                                  weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, spec.pretrain_warmup_steps, spec.pretrain_steps))
    order = _batches(len(conversations), spec.pretrain_batch_size, spec.seed)
    losses: list[float] = []
    model.train()
    with tqdm(range(spec.pretrain_steps), desc="pre-training tiny model", unit="step") as progress:
        for _ in progress:
            batch = collate([conversations[i] for i in next(order)])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return PretrainResult(
        steps=spec.pretrain_steps,
        first_loss=round(losses[0], 4),
        final_loss=round(sum(losses[-50:]) / len(losses[-50:]), 4),
        losses_every_50_steps=[round(x, 4) for x in losses[::50]],
    )


def _batches(count: int, batch_size: int, seed: int):
    """Endless shuffled epochs, seeded, so the same recipe sees the same batches in the same order."""
    rng = random.Random(seed)
    while True:
        order = list(range(count))
        rng.shuffle(order)
        for start in range(0, count - batch_size + 1, batch_size):
            yield order[start:start + batch_size]
