"""Format `conversation`: conversation JSONL, the format the trainer writes and the embedded dataset uses.

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "images/0001.png"},
                                               {"type": "text", "text": "What color is the circle?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}

Image paths are relative to the JSONL file's directory; `content` may also be a plain string.
"""

from __future__ import annotations

from pathlib import Path

from ._records import Parser, parse_chat_record
from .errors import DatasetFormatError
from .images import ImageResolver
from .types import Conversation, ImagePart


def parser(images: ImageResolver) -> Parser:
    def image_part(raw: dict, path: Path, line: int, field: str) -> ImagePart:
        if raw.get("type") != "image":
            raise DatasetFormatError(path, f"part type must be 'text' or 'image', got {raw.get('type')!r}", line=line,
                                     field=f"{field}.type")
        image = images.resolve(raw.get("image"))
        if type(image) is str:
            raise DatasetFormatError(path, image, line=line, field=f"{field}.image")
        return ImagePart(image)  # type: ignore[arg-type]

    def parse(record: dict, path: Path, line: int) -> Conversation:
        return parse_chat_record(record, path, line, image_part)

    return parse
