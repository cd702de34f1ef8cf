"""Which format a dataset is in, from its first records, and why: never a silent guess.

The first record names the family by its keys (`conversations`, `messages`, `instruction`+`output`, or table
columns); a record that fits two families is ambiguous. Within a family the first records that carry images
decide (a singular `image` is LLaVA, `images` is ShareGPT; `image_url` parts are OpenAI, `{"type": "image"}`
parts with a path are ours, without one TRL's); records that disagree are ambiguous too.
"""

from __future__ import annotations

import enum
from pathlib import Path

from .errors import DatasetFormatError
from .table import known_mapping


class DatasetFormat(str, enum.Enum):
    CONVERSATION = "conversation"
    OPENAI = "openai"
    TABLE = "table"
    SHAREGPT = "sharegpt"
    ALPACA = "alpaca"
    LLAVA = "llava"
    TRL_MESSAGES = "trl_messages"


def detect(path: Path, records: list[dict]) -> tuple[DatasetFormat, str]:
    if not records:
        raise DatasetFormatError(path, "dataset is empty")
    first = records[0]
    families = _families(first)
    if len(families) > 1:
        names = " or ".join(f"{f.value} ({why})" for f, why in families.items())
        raise DatasetFormatError(path, f"ambiguous: the first record could be {names}; name the dataset format")
    if not families:
        return DatasetFormat.TABLE, NO_CHAT_KEYS
    family, why = next(iter(families.items()))
    if family is DatasetFormat.SHAREGPT:
        return _refine(path, records, _conversations_evidence, DatasetFormat.SHAREGPT,
                       "records have 'conversations' and no image key: ShareGPT (LLaVA reads them alike)")
    if family is DatasetFormat.CONVERSATION:
        return _refine(path, records, _messages_evidence, DatasetFormat.CONVERSATION,
                       "records have 'messages' without images: conversation (openai reads them alike)")
    return family, f"the first record has {why}"


NO_CHAT_KEYS = "no chat keys (conversations, messages, instruction/output) in the first record"


def _families(record: dict) -> dict[DatasetFormat, str]:
    found = {}
    if isinstance(record.get("conversations"), list):
        found[DatasetFormat.SHAREGPT] = "'conversations'"
    if isinstance(record.get("messages"), list):
        found[DatasetFormat.CONVERSATION] = "'messages'"
    if "instruction" in record and "output" in record:
        found[DatasetFormat.ALPACA] = "'instruction' and 'output' (Alpaca)"
    mapping = known_mapping(set(record))
    if mapping is not None:
        found[DatasetFormat.TABLE] = f"the columns {mapping.image}/{mapping.question}/{mapping.answer}"
    return found


def _refine(path: Path, records: list[dict], evidence, default: DatasetFormat, default_why: str):
    seen: dict[DatasetFormat, tuple[int, str]] = {}
    for index, record in enumerate(records, start=1):
        for fmt, why in evidence(record):
            seen.setdefault(fmt, (index, why))
    if len(seen) > 1:
        names = " or ".join(f"{f.value} (record {i}: {why})" for f, (i, why) in seen.items())
        raise DatasetFormatError(path, f"ambiguous: the first records could be {names}; name the dataset format")
    if not seen:
        return default, default_why
    fmt, (index, why) = next(iter(seen.items()))
    return fmt, f"record {index} has {why}" if index > 1 else f"the first record has {why}"


def _conversations_evidence(record: dict):
    if "image" in record and record["image"] is not None:
        yield DatasetFormat.LLAVA, "'conversations' and a singular 'image' (LLaVA-Instruct)"
    if record.get("images"):
        yield DatasetFormat.SHAREGPT, "'conversations' and an 'images' list (ShareGPT)"


def _messages_evidence(record: dict):
    part_types: set[str] = set()
    image_paths = False
    for message in record["messages"]:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    part_types.add(part.get("type"))  # type: ignore[arg-type]
                    image_paths = image_paths or (part.get("type") == "image" and part.get("image") is not None)
    if "image_url" in part_types:
        yield DatasetFormat.OPENAI, "'image_url' parts (OpenAI)"
    if image_paths:
        yield DatasetFormat.CONVERSATION, "{'type': 'image', 'image': path} parts (conversation)"
    elif "image" in part_types:
        yield DatasetFormat.TRL_MESSAGES, "{'type': 'image'} placeholders and an 'images' column (TRL vision SFT)"
    elif record.get("images") and not part_types - {None}:
        yield DatasetFormat.SHAREGPT, ("'messages' of plain strings and an 'images' list (LLaMA-Factory's "
                                       "mllm_demo layout: ShareGPT with role/content tags)")
