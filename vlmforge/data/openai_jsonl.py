"""Format `openai`: OpenAI vision fine-tuning JSONL, images as `image_url` parts holding `data:` URLs.

    {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is shown?"},
                  {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR..."}}]},
                  {"role": "assistant", "content": "a red circle"}]}

http(s) image URLs are refused: datasets are never fetched from the network.
"""

from __future__ import annotations

from pathlib import Path

from ._records import parse_chat_record, require
from .errors import DatasetFormatError
from .images import image_from_data_url
from .types import Conversation, ImagePart


def parse(record: dict, path: Path, line: int) -> Conversation:
    return parse_chat_record(record, path, line, _image_url_part)


def _image_url_part(raw: dict, path: Path, line: int, field: str) -> ImagePart:
    if raw.get("type") != "image_url":
        raise DatasetFormatError(path, f"part type must be 'text' or 'image_url', got {raw.get('type')!r}", line=line,
                                 field=f"{field}.type")
    image_url = require(raw, "image_url", dict, path=path, line=line, field=f"{field}.image_url")
    url = require(image_url, "url", str, path=path, line=line, field=f"{field}.image_url.url")
    if not url.startswith("data:"):
        raise DatasetFormatError(path, "only data: image URLs are accepted; remote images are never fetched",
                                 line=line, field=f"{field}.image_url.url")
    return ImagePart(image_from_data_url(url, file=path, line=line, field=f"{field}.image_url.url"))
