"""Format `alpaca`: LLaMA-Factory's Alpaca records, multimodal included.

    [{"instruction": "<image>What color is the circle?", "input": "", "output": "red",
      "images": ["images/0001.png"], "system": "optional", "history": [["earlier question", "earlier answer"]]}]

As LLaMA-Factory's converter does: the user turn is `instruction` and `input` joined by a newline (empty ones
left out), `history` pairs become earlier turns, and images follow the `<image>` rule of ShareGPT.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._records import Parser, build_conversation, count_placeholders, place_images
from .errors import DatasetFormatError
from .images import ImageResolver, image_from_value
from .types import Conversation, Message, TextPart


@dataclass(frozen=True)
class AlpacaLayout:
    """Column names (None: not read), as LLaMA-Factory's dataset_info.json `columns` spells them."""

    prompt: str | None = "instruction"
    query: str | None = "input"
    response: str | None = "output"
    history: str | None = "history"
    system: str | None = "system"
    images: str | None = "images"
    tools: str | None = None
    origin: str = ""


def parser(layout: AlpacaLayout, images: ImageResolver) -> Parser:
    if layout.response is None:
        raise ValueError("an Alpaca layout needs a response column")

    def text(record: dict, column: str | None, path: Path, line: int) -> str:
        value = record.get(column) if column else None
        if value is None:
            return ""
        if not isinstance(value, str):
            raise DatasetFormatError(path, f"expected a string, got {type(value).__name__}", line=line, field=column)
        return value

    def parse(record: dict, path: Path, line: int) -> Conversation:
        if layout.tools is not None and record.get(layout.tools):
            raise DatasetFormatError(path, "tool descriptions are not supported", line=line, field=layout.tools)
        messages: list[Message] = []
        for pair in _history(record, path, line):
            messages += [Message("user", (TextPart(pair[0]),)), Message("assistant", (TextPart(pair[1]),))]
        query = "\n".join(part for part in (text(record, layout.prompt, path, line),
                                            text(record, layout.query, path, line)) if part)
        answer = text(record, layout.response, path, line)
        if not query.strip():
            raise DatasetFormatError(path, "the instruction is empty", line=line, field=layout.prompt)
        if not answer.strip():
            raise DatasetFormatError(path, "expected non-empty text", line=line, field=layout.response)
        messages += [Message("user", (TextPart(query),)), Message("assistant", (TextPart(answer),))]
        record_images = _images(record, path, line)
        placeholders = count_placeholders(m.text for m in messages)
        hint = f" (no images column is mapped{layout.origin})" if placeholders and layout.images is None else ""
        messages = place_images(messages, record_images, placeholders, path=path, line=line,
                                field=layout.images or layout.prompt or "images", hint=hint)
        system = text(record, layout.system, path, line)
        if system:
            messages.insert(0, Message("system", (TextPart(system),)))
        return build_conversation(messages, path=path, line=line, field=layout.response)

    def _history(record: dict, path: Path, line: int) -> list[tuple[str, str]]:
        raw = record.get(layout.history) if layout.history else None
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise DatasetFormatError(path, "expected a list of [question, answer] pairs", line=line,
                                     field=layout.history)
        for index, pair in enumerate(raw):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                raise DatasetFormatError(path, "expected a [question, answer] pair of strings", line=line,
                                         field=f"{layout.history}[{index}]")
        return [tuple(pair) for pair in raw]  # type: ignore[misc]

    def _images(record: dict, path: Path, line: int):
        raw = record.get(layout.images) if layout.images else None
        if raw is None:
            return []
        raw = [raw] if isinstance(raw, (str, dict)) else raw
        if not isinstance(raw, list):
            raise DatasetFormatError(path, "expected a list of images", line=line, field=layout.images)
        return [image_from_value(value, images, file=path, line=line, field=layout.images, index=i)
                for i, value in enumerate(raw)]

    return parse
