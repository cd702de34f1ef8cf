"""A plain transformers + peft LoRA fine-tune and a greedy exact-match evaluation, in-process.

This is the smallest honest version of the product's main job, used by `make demo` and the LoRA-lift
benchmark until the trainer service (gRPC, job store, checkpoints, events) takes it over.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .chat_format import ChatCollator, prompt_text
from .data.types import Conversation
from .tiny_model.pretrain import warmup_cosine

# LoRA on every linear layer, language and vision (Qwen2-VL module names), as Unsloth's defaults do for VLMs.
QWEN2_VL_ALL_LINEAR = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|qkv|attn\.proj|fc1|fc2|mlp\.0|mlp\.2)$"


@dataclass(frozen=True)
class LoraSettings:
    steps: int = 600
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    rank: int = 16
    alpha: int = 32
    seed: int = 0


@dataclass(frozen=True)
class Answer:
    question: str
    reference: str
    prediction: str

    @property
    def exact(self) -> bool:
        return normalize(self.prediction) == normalize(self.reference)


def normalize(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def exact_match(answers: list[Answer]) -> float:
    return sum(a.exact for a in answers) / max(1, len(answers))


def answer_questions(model, processor, samples: list[Conversation], *, batch_size: int = 25,
                     max_new_tokens: int = 24) -> list[Answer]:
    """Greedy answers, batched with left padding (what generation needs)."""
    model.eval()
    tokenizer = processor.tokenizer
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            images = [image.open() for sample in chunk for image in sample.images]
            batch = processor(text=[prompt_text(processor, s) for s in chunk], images=images or None,
                              padding=True, return_tensors="pt")
            with torch.no_grad():
                generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            texts = processor.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            answers += [Answer(s.question, s.reference_answer, t.strip()) for s, t in zip(chunk, texts)]
    finally:
        tokenizer.padding_side = previous_side
    return answers


def train_lora(model, processor, train_set: list[Conversation], settings: LoraSettings, output_dir: Path):
    """Wraps `model` in a peft LoRA, trains it, saves the adapter (safetensors) and returns the peft model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(settings.seed)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0,
                        target_modules=QWEN2_VL_ALL_LINEAR)
    peft_model = get_peft_model(model, config)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, settings.warmup_steps, settings.steps))
    collate = ChatCollator(processor)
    rng = random.Random(settings.seed)
    peft_model.train()
    started = time.perf_counter()
    losses: list[float] = []
    with tqdm(range(settings.steps), desc="LoRA fine-tune", unit="step") as progress:
        for _ in progress:
            loss = peft_model(**collate(rng.sample(train_set, settings.batch_size))).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            progress.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    peft_model.save_pretrained(output_dir)  # adapter_config.json + adapter_model.safetensors
    return peft_model, time.perf_counter() - started, losses
