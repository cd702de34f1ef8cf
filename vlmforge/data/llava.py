"""Format `llava`: LLaVA-Instruct JSON (`llava_v1_5_mix665k.json`, `llava_instruct_150k.json`).

    [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                        {"from": "gpt", "value": "The bus is white and red."}]},
     {"id": "i6IyJda_0", "conversations": [{"from": "human", "value": "a text-only question"}, ...]}]

The image path is relative to the JSON file's directory (LLaVA's `--image_folder`: put the JSON there). As
LLaVA's `preprocess_multimodal` does, the `<image>` token (with the newline around it) moves to the start of
its turn. Records without `image` are text-only samples and are kept: LLaVA-1.5 trains on them too, and the
collator renders a sample without images.
"""

from __future__ import annotations

from pathlib import Path

from ._records import IMAGE_PLACEHOLDER, Parser, build_conversation, require
from .errors import DatasetFormatError
from .images import ImageResolver
from .types import Conversation, ImagePart, ImageRef, Message, Part, TextPart

_ROLES = {"human": "user", "gpt": "assistant"}


def parser(images: ImageResolver) -> Parser:
    def parse(record: dict, path: Path, line: int) -> Conversation:
        turns = require(record, "conversations", list, path=path, line=line)
        record_images = _images(record, path, line)
        messages: list[Message] = []
        placeholders = 0
        for index, turn in enumerate(turns):
            if type(turn) is not dict:
                raise DatasetFormatError(path, "expected an object", line=line, field=f"conversations[{index}]")
            value = turn.get("value")
            if type(value) is not str:  # field names are built on errors only: this loop runs millions of times
                require(turn, "value", str, path=path, line=line, field=f"conversations[{index}].value")
            tag = turn.get("from")
            if index == 0 and tag == "system":
                messages.append(Message("system", (TextPart(value),)))
                continue
            turns_so_far = len(messages) - (1 if messages and messages[0].role == "system" else 0)
            want = "human" if turns_so_far % 2 == 0 else "gpt"
            if tag != want:
                raise DatasetFormatError(path, f"'from' must be {want!r} here (turns alternate human, gpt), "
                                               f"got {tag!r}", line=line, field=f"conversations[{index}].from")
            placeholders += value.count(IMAGE_PLACEHOLDER)
            messages.append(Message(_ROLES[tag], (TextPart(value),)))
        if placeholders and placeholders != len(record_images):
            raise DatasetFormatError(path, f"{placeholders} {IMAGE_PLACEHOLDER} placeholders but "
                                           f"{len(record_images)} images", line=line, field="image")
        messages = _placed(messages, record_images)
        return build_conversation(messages, path=path, line=line, field="conversations")

    def _images(record: dict, path: Path, line: int) -> list[ImageRef]:
        if record.get("images"):  # never dropped silently: ShareGPT's key in a file detected as LLaVA
            raise DatasetFormatError(path, "an 'images' list is ShareGPT's key, LLaVA's is 'image': name the "
                                           "dataset format sharegpt", line=line, field="images")
        raw = record.get("image")
        if raw is None:
            return []
        if isinstance(raw, list):  # LLaVA-NeXT / OneVision multi-image records
            return [images.from_path(value, file=path, line=line, field=f"image[{i}]") for i, value in enumerate(raw)]
        image = images.resolve(raw)
        if type(image) is str:
            raise DatasetFormatError(path, image, line=line, field="image")
        return [image]  # type: ignore[list-item]

    return parse


def _placed(messages: list[Message], record_images: list[ImageRef]) -> list[Message]:
    """Each turn's images go first (in order), its text without the tokens; with no token anywhere, the images
    open the first human turn."""
    if not record_images:
        return messages
    pending = list(record_images)
    any_token = any(IMAGE_PLACEHOLDER in m.text for m in messages)
    placed = []
    for message in messages:
        text = message.text
        count = text.count(IMAGE_PLACEHOLDER) if any_token else (len(pending) if message.role == "user" else 0)
        if count:
            parts: list[Part] = [ImagePart(pending.pop(0)) for _ in range(count)]
            parts.append(TextPart(text.replace(IMAGE_PLACEHOLDER, "").strip()))
            message = Message(message.role, tuple(parts))
        placed.append(message)
    return placed
