"""Format (d): ShareGPT JSON as LLaMA-Factory reads it (a JSON array, or JSONL, of records).

    [{"conversations": [{"from": "human", "value": "<image>What color is the circle?"},
                        {"from": "gpt", "value": "red"}],
      "images": ["images/0001.png"], "system": "optional system prompt"}]

Each `<image>` placeholder takes the next entry of `images`; with no placeholder the images go before the
first user text. Image paths are relative to the file's directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._records import build_conversation, read_jsonl, require
from .errors import DatasetFormatError, numbered_as
from .images import image_from_path
from .types import Conversation, ImagePart, ImageRef, Message, Part, TextPart

IMAGE_PLACEHOLDER = "<image>"
_ROLE_BY_TAG = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def load(path: Path) -> list[Conversation]:
    with numbered_as("line" if path.suffix == ".jsonl" else "record"):
        return [_parse(record, path, line) for line, record in _records(path)]


def _records(path: Path):
    if path.suffix == ".jsonl":
        yield from read_jsonl(path)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetFormatError(path, f"invalid JSON ({err.msg})", line=err.lineno) from None
    if not isinstance(data, list):
        raise DatasetFormatError(path, "expected a JSON array of records")
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise DatasetFormatError(path, "expected an object", line=index + 1)
        yield index + 1, record


def _parse(record: dict, path: Path, line: int) -> Conversation:
    turns = require(record, "conversations", list, path=path, line=line)
    raw_images = record.get("images", [])
    if not isinstance(raw_images, list):
        raise DatasetFormatError(path, "expected a list of image paths", line=line, field="images")
    images = [image_from_path(raw, path.parent, file=path, line=line, field=f"images[{i}]")
              for i, raw in enumerate(raw_images)]
    placeholders = sum(str(turn.get("value", "")).count(IMAGE_PLACEHOLDER) for turn in turns if isinstance(turn, dict))
    if placeholders and placeholders != len(images):
        raise DatasetFormatError(path, f"{placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images",
                                 line=line, field="images")

    messages: list[Message] = []
    system = record.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise DatasetFormatError(path, "expected a string", line=line, field="system")
        messages.append(Message(role="system", parts=(TextPart(system),)))
    pending = list(images)
    for index, turn in enumerate(turns):
        field = f"conversations[{index}]"
        if not isinstance(turn, dict):
            raise DatasetFormatError(path, "expected an object", line=line, field=field)
        tag = turn.get("from")
        if tag not in _ROLE_BY_TAG:
            raise DatasetFormatError(path, f"'from' must be one of {', '.join(_ROLE_BY_TAG)}, got {tag!r}",
                                     line=line, field=f"{field}.from")
        value = require(turn, "value", str, path=path, line=line, field=f"{field}.value")
        role = _ROLE_BY_TAG[tag]
        if placeholders:
            parts = _split_placeholders(value, pending)
        elif role == "user" and pending:
            parts = tuple(ImagePart(image) for image in pending) + (TextPart(value),)
            pending = []
        else:
            parts = (TextPart(value),)
        messages.append(Message(role=role, parts=parts))  # type: ignore[arg-type]
    return build_conversation(messages, path=path, line=line, field="conversations")


def _split_placeholders(text: str, pending: list[ImageRef]) -> tuple[Part, ...]:
    """'<image>What is this?' -> (image, 'What is this?'), consuming images from `pending` in order."""
    parts: list[Part] = []
    for position, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if position > 0:
            parts.append(ImagePart(pending.pop(0)))
        if chunk:
            parts.append(TextPart(chunk))
    return tuple(parts)
