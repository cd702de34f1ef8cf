"""Format `trl_messages`: TRL's vision SFT layout, as `SFTTrainer` reads it from a `datasets` dataset.

    {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}],
     "images": [<Image: {"bytes": b"...", "path": null}>]}

Each `{"type": "image"}` part takes the next entry of `images` (encoded bytes, a `datasets` Image value, or a
path relative to the dataset directory). In Arrow storage parts carry every struct field (`"text": null`).
"""

from __future__ import annotations

from pathlib import Path

from ._records import Parser, parse_chat_record
from .errors import DatasetFormatError
from .images import ImageResolver, image_from_value
from .types import Conversation, ImagePart, ImageRef


def parser(images: ImageResolver) -> Parser:
    def parse(record: dict, path: Path, line: int) -> Conversation:
        raw_images = record.get("images")
        raw_images = [] if raw_images is None else raw_images
        if not isinstance(raw_images, (list, tuple)):
            raise DatasetFormatError(path, "expected a list of images", line=line, field="images")
        pending: list[ImageRef] = [image_from_value(value, images, file=path, line=line, field="images", index=i)
                                   for i, value in enumerate(raw_images)]
        used = 0

        def image_part(raw: dict, part_path: Path, part_line: int, field: str) -> ImagePart:
            nonlocal used
            if raw.get("type") != "image":
                raise DatasetFormatError(part_path, f"part type must be 'text' or 'image', got {raw.get('type')!r}",
                                         line=part_line, field=f"{field}.type")
            used += 1
            if used > len(pending):
                raise DatasetFormatError(part_path, f"more {{'type': 'image'}} parts than the {len(pending)} "
                                                    "entries of images", line=part_line, field=field)
            return ImagePart(pending[used - 1])

        conversation = parse_chat_record(record, path, line, image_part, reads_images_column=True)
        if used != len(pending):
            raise DatasetFormatError(path, f"{len(pending)} images but {used} {{'type': 'image'}} parts", line=line,
                                     field="images")
        return conversation

    return parse
