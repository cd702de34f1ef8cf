"""Format `sharegpt`: LLaMA-Factory's ShareGPT (a JSON array, or JSONL, of records), with any tags mapping.

    [{"conversations": [{"from": "human", "value": "<image>What color is the circle?"},
                        {"from": "gpt", "value": "red"}],
      "images": ["images/0001.png"], "system": "optional system prompt"}]

LLaMA-Factory's own multimodal demo (`mllm_demo.json`) is the same with `"messages"` and role/content/user/
assistant tags. As in LLaMA-Factory, turns alternate user / assistant after an optional leading system turn,
each `<image>` takes the next entry of `images`, and with no placeholder the images go before the first user
text. Without a dataset_info.json the tags are read off the file (from/value or role/content, either role
vocabulary); with one, exactly the entry's columns and tags apply (`llamafactory.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._records import IMAGE_PLACEHOLDER, Parser, build_conversation, count_placeholders, place_images, require
from .errors import DatasetFormatError
from .images import ImageResolver, image_from_value
from .types import Conversation, ImageRef, Message, TextPart


@dataclass(frozen=True)
class ShareGptLayout:
    """Column names (None: not read) and role tags, as LLaMA-Factory's dataset_info.json spells them."""

    messages: str = "conversations"
    images: str | None = "images"
    system: str | None = "system"
    tools: str | None = None
    role_tag: str = "from"
    content_tag: str = "value"
    user_tags: tuple[str, ...] = ("human",)
    assistant_tags: tuple[str, ...] = ("gpt",)
    system_tag: str | None = "system"
    unsupported_tags: tuple[str, ...] = ("observation", "function_call")  # tool turns: not trained here
    llava_image: bool = False  # also read LLaVA's singular `image` (a file whose first records had no image key)
    origin: str = ""  # " (dataset_info.json entry 'x')", appended to messages about the layout


def bare_layout(first: dict) -> ShareGptLayout:
    """A ShareGPT file without a dataset_info.json: the tags its first record uses, either role vocabulary."""
    messages = "messages" if "messages" in first and "conversations" not in first else "conversations"
    turns = first.get(messages)
    turn = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
    role_tag, content_tag = ("role", "content") if "role" in turn and "from" not in turn else ("from", "value")
    return ShareGptLayout(messages=messages, role_tag=role_tag, content_tag=content_tag,
                          user_tags=("human", "user"), assistant_tags=("gpt", "assistant"), llava_image=True)


def parser(layout: ShareGptLayout, images: ImageResolver) -> Parser:
    roles = {tag: "user" for tag in layout.user_tags} | {tag: "assistant" for tag in layout.assistant_tags}
    expected = ("user", "assistant")
    tags_by_role = {"user": "/".join(map(repr, layout.user_tags)),
                    "assistant": "/".join(map(repr, layout.assistant_tags))}

    def parse(record: dict, path: Path, line: int) -> Conversation:
        turns = require(record, layout.messages, list, path=path, line=line)
        record_images = _images(record, path, line)
        messages: list[Message] = []
        system = _system(record, path, line)
        texts = []
        for index, turn in enumerate(turns):
            if type(turn) is not dict:
                raise DatasetFormatError(path, "expected an object", line=line, field=f"{layout.messages}[{index}]")
            tag = turn.get(layout.role_tag)
            value = turn.get(layout.content_tag)
            if type(value) is not str:  # field names are built on errors only: this loop runs millions of times
                require(turn, layout.content_tag, str, path=path, line=line,
                        field=f"{layout.messages}[{index}].{layout.content_tag}")
            if index == 0 and layout.system_tag is not None and tag == layout.system_tag:
                system = value  # a leading system turn overrides the system column, as in LLaMA-Factory
                continue
            role = roles.get(tag) if type(tag) is str else None
            want = expected[len(messages) % 2]
            if role != want:
                field = f"{layout.messages}[{index}]"
                if tag in layout.unsupported_tags:
                    raise DatasetFormatError(path, f"tool turns ({tag!r}) are not supported", line=line,
                                             field=f"{field}.{layout.role_tag}")
                known = ", ".join(repr(t) for t in (*roles, layout.system_tag) if t is not None)
                message = (f"{layout.role_tag} must be {tags_by_role[want]} here (turns alternate user, assistant)"
                           if role else f"{layout.role_tag} must be one of {known}, got {tag!r}")
                raise DatasetFormatError(path, message + layout.origin, line=line, field=f"{field}.{layout.role_tag}")
            texts.append(value)
            messages.append(Message(role, (TextPart(value),)))
        placeholders = count_placeholders(texts)
        messages = place_images(messages, record_images, placeholders, path=path, line=line,
                                field=layout.images or layout.messages, hint=_hint(record, placeholders, record_images))
        if system is not None:
            messages.insert(0, Message("system", (TextPart(system),)))
        return build_conversation(messages, path=path, line=line, field=layout.messages)

    def _images(record: dict, path: Path, line: int) -> list[ImageRef]:
        raw = record.get(layout.images) if layout.images is not None else None
        if raw is None and layout.llava_image:
            raw = record.get("image")
        if raw is None:
            return []
        raw = [raw] if isinstance(raw, (str, dict)) else raw  # LLaMA-Factory also takes a single image
        if not isinstance(raw, list):
            raise DatasetFormatError(path, "expected a list of images", line=line, field=layout.images)
        return [image_from_value(value, images, file=path, line=line, field=layout.images, index=i)
                for i, value in enumerate(raw)]

    def _system(record: dict, path: Path, line: int) -> str | None:
        if layout.tools is not None and record.get(layout.tools):
            raise DatasetFormatError(path, "tool descriptions are not supported", line=line, field=layout.tools)
        if layout.system is None or record.get(layout.system) in (None, ""):
            return None
        return require(record, layout.system, str, path=path, line=line)

    def _hint(record: dict, placeholders: int, found: list[ImageRef]) -> str:
        if placeholders and not found:
            if not layout.llava_image and isinstance(record.get("image"), str):
                return " (this record has a singular 'image' key: that is the LLaVA-Instruct layout, format llava)"
            if layout.images is None:
                return f" (no images column is mapped{layout.origin})"
        return ""

    return parse


__all__ = ["IMAGE_PLACEHOLDER", "ShareGptLayout", "bare_layout", "parser"]
