"""Format (a): conversation JSONL, the format the trainer writes and the embedded dataset uses.

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "images/0001.png"},
                                               {"type": "text", "text": "What color is the circle?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}

Image paths are relative to the JSONL file's directory; `content` may also be a plain string.
"""

from __future__ import annotations

from pathlib import Path

from ._records import parse_chat_record, read_jsonl
from .errors import DatasetFormatError
from .images import image_from_path
from .types import Conversation, ImagePart


def load(path: Path) -> list[Conversation]:
    return [parse_chat_record(record, path, line, _image_part) for line, record in read_jsonl(path)]


def _image_part(raw: dict, path: Path, line: int, field: str) -> ImagePart:
    if raw.get("type") != "image":
        raise DatasetFormatError(path, f"part type must be 'text' or 'image', got {raw.get('type')!r}", line=line,
                                 field=f"{field}.type")
    return ImagePart(image_from_path(raw.get("image"), path.parent, file=path, line=line, field=f"{field}.image"))
