"""Test questions through the inference service's OpenAI API, many at once (vLLM batches them)."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai

from vlmforge.data.types import Conversation


@dataclass(frozen=True)
class ServedAnswer:
    question: str
    reference: str
    prediction: str


def image_data_url(sample: Conversation) -> str:
    buffer = io.BytesIO()
    sample.images[0].open().convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def ask_all(client: openai.OpenAI, model: str, samples: list[Conversation], *, concurrency: int = 16,
            max_tokens: int = 24) -> list[ServedAnswer]:
    def ask(sample: Conversation) -> ServedAnswer:
        reply = client.chat.completions.create(model=model, max_tokens=max_tokens, temperature=0, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(sample)}},
                                         {"type": "text", "text": sample.question}]}])
        return ServedAnswer(sample.question, sample.reference_answer, (reply.choices[0].message.content or "").strip())

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(ask, samples))
