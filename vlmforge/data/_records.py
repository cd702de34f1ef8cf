"""Reading JSON records and checking the conversation rules every chat-shaped format shares."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import DatasetFormatError
from .types import Conversation, ImagePart, ImageRef, Message, Part, TextPart

_ROLES = ("system", "user", "assistant")
IMAGE_PLACEHOLDER = "<image>"

Parser = Callable[[dict, Path, int], Conversation]
"""Turns one record into a Conversation: (record, file, number); raises DatasetFormatError naming the field."""


def require(record: dict, key: str, kind: type | tuple[type, ...], *, path: Path, line: int, field: str | None = None):
    if key not in record:
        raise DatasetFormatError(path, "missing", line=line, field=field or key)
    value = record[key]
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DatasetFormatError(path, f"expected {names}, got {type(value).__name__}", line=line, field=field or key)
    return value


def check_role(role: object, *, path: Path, line: int, field: str) -> str:
    if role not in _ROLES:
        raise DatasetFormatError(path, f"role must be one of {', '.join(_ROLES)}, got {role!r}", line=line, field=field)
    return role  # type: ignore[return-value]


def build_conversation(messages: list[Message], *, path: Path, line: int, field: str = "messages") -> Conversation:
    """Enforces what training needs: optional leading system, user/assistant turns, an assistant answer last."""
    if not messages:
        raise DatasetFormatError(path, "conversation has no messages", line=line, field=field)
    for index, message in enumerate(messages):
        if message.role == "system" and index != 0:
            raise DatasetFormatError(path, "a system message may only come first", line=line, field=f"{field}[{index}]")
    turns = messages[1:] if messages[0].role == "system" else messages
    if not any(m.role == "user" for m in turns):
        raise DatasetFormatError(path, "conversation has no user message", line=line, field=field)
    if turns[-1].role != "assistant":
        raise DatasetFormatError(path, "the last message must be the assistant's answer", line=line,
                                 field=f"{field}[{len(messages) - 1}]")
    if not turns[-1].text.strip():
        raise DatasetFormatError(path, "the assistant's answer is empty", line=line, field=f"{field}[{len(messages) - 1}]")
    if any(type(part) is ImagePart for part in turns[-1].parts):
        raise DatasetFormatError(path, "the assistant's answer may not contain images", line=line,
                                 field=f"{field}[{len(messages) - 1}]")
    return Conversation(messages=tuple(messages), source=f"{path.name}:{line}")


PartParser = Callable[[dict, Path, int, str], Part]
"""Parses one non-text content part (the piece in which chat formats differ): (part, file, line, field)."""


def parse_chat_record(record: dict, path: Path, line: int, parse_media_part: PartParser, *,
                      reads_images_column: bool = False) -> Conversation:
    """`{"messages": [{"role", "content": str | [parts]}]}`, shared by the conversation, OpenAI and TRL formats.
    Field names for errors are built only when there is an error: this runs a million times a dataset."""
    raw_messages = record.get("messages")
    if type(raw_messages) is not list:
        require(record, "messages", list, path=path, line=line)
    if record.get("images") and not reads_images_column:
        # Never dropped silently: a file whose first records had no images was detected as this format.
        raise DatasetFormatError(path, "an 'images' column is not read by this format; it is ShareGPT's (mllm_demo) "
                                       "or TRL's layout: name that dataset format", line=line, field="images")
    messages = []
    for index, raw in enumerate(raw_messages):  # type: ignore[arg-type]
        if type(raw) is not dict:
            raise DatasetFormatError(path, "expected an object", line=line, field=f"messages[{index}]")
        role = raw.get("role")
        if role not in _ROLES:
            check_role(role, path=path, line=line, field=f"messages[{index}].role")
        content = raw.get("content")
        if type(content) is str:
            parts: tuple[Part, ...] = (TextPart(content),)
        elif type(content) is list:
            parts = _chat_parts(content, path, line, index, parse_media_part)
        else:
            parts = ()
            require(raw, "content", (str, list), path=path, line=line, field=f"messages[{index}].content")
        messages.append(Message(role, parts))  # type: ignore[arg-type]
    return build_conversation(messages, path=path, line=line)


def _chat_parts(content: list, path: Path, line: int, message_index: int,
                parse_media_part: PartParser) -> tuple[Part, ...]:
    parts: list[Part] = []
    for index, raw in enumerate(content):
        if type(raw) is dict and raw.get("type") == "text":
            text = raw.get("text")
            if type(text) is not str:
                require(raw, "text", str, path=path, line=line,
                        field=f"messages[{message_index}].content[{index}].text")
            parts.append(TextPart(text))  # type: ignore[arg-type]
            continue
        field = f"messages[{message_index}].content[{index}]"
        if not isinstance(raw, dict):
            raise DatasetFormatError(path, "expected an object", line=line, field=field)
        parts.append(parse_media_part(raw, path, line, field))
    return tuple(parts)


def split_placeholders(text: str, pending: list[ImageRef]) -> tuple[Part, ...]:
    """'<image>What is this?' -> (image, 'What is this?'), consuming images from `pending` in order."""
    if IMAGE_PLACEHOLDER not in text:
        return (TextPart(text),)
    parts: list[Part] = []
    for position, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if position > 0:
            parts.append(ImagePart(pending.pop(0)))
        if chunk:
            parts.append(TextPart(chunk))
    return tuple(parts)


def place_images(messages: list[Message], images: list[ImageRef], placeholders: int, *, path: Path, line: int,
                 field: str, hint: str = "") -> list[Message]:
    """LLaMA-Factory's rule: each `<image>` takes the next image; with no placeholder at all the images go
    before the first user text. Messages come in as text only."""
    if placeholders and placeholders != len(images):
        raise DatasetFormatError(path, f"{placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} "
                                       f"images{hint}", line=line, field=field)
    if not images:
        return messages
    pending = list(images)
    placed = []
    for message in messages:
        if placeholders:
            text = message.text
            if IMAGE_PLACEHOLDER in text:
                message = Message(message.role, split_placeholders(text, pending))
        elif pending and message.role == "user":
            message = Message(message.role, tuple(ImagePart(image) for image in pending) + message.parts)
            pending = []
        placed.append(message)
    return placed


def count_placeholders(texts) -> int:
    return sum(text.count(IMAGE_PLACEHOLDER) for text in texts)
