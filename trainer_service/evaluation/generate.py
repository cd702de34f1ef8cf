"""Greedy answers to evaluation questions, batched with left padding (what generation needs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmforge.chat_format import images_by_conversation, prompt_text
from vlmforge.data.types import Conversation

from .metrics import exact_match


@dataclass(frozen=True)
class Answer:
    question: str
    reference: str
    prediction: str

    @property
    def exact(self) -> bool:
        return exact_match(self.prediction, self.reference)


def exact_match_rate(answers: list[Answer]) -> float:
    return sum(a.exact for a in answers) / max(1, len(answers))


def answer_questions(model, processor, samples: list[Conversation], *, batch_size: int = 25,
                     max_new_tokens: int = 24) -> list[Answer]:
    model.eval()
    tokenizer = processor.tokenizer
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            batch = processor(text=[prompt_text(processor, s) for s in chunk], images=images_by_conversation(chunk),
                              padding=True, return_tensors="pt").to(model.device)
            with torch.no_grad():
                generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            texts = processor.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            answers += [Answer(s.question, s.reference_answer, t.strip()) for s, t in zip(chunk, texts)]
    finally:
        tokenizer.padding_side = previous_side
    return answers
