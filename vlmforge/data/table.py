"""Format (c): a table with one row per question, columns named by the user.

CSV, JSONL, Parquet, or a Hugging Face `datasets` dataset saved with `save_to_disk`. MEDPIX-style data maps
`image_id/question/answer`, ChartQA-style `image/query/label`. An image cell may hold a path relative to the
table's directory, a `data:` URL, raw bytes, or a `datasets` Image value (`{"bytes", "path"}`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._records import build_conversation
from .errors import DatasetFormatError, numbered_as
from .images import image_from_bytes, image_from_path
from .types import Conversation, ImagePart, ImageRef, Message, TextPart

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl")


@dataclass(frozen=True)
class ColumnMapping:
    image: str = "image"
    question: str = "question"
    answer: str = "answer"


KNOWN_MAPPINGS = (
    ColumnMapping("image", "question", "answer"),
    ColumnMapping("image_id", "question", "answer"),  # MEDPIX short-QA
    ColumnMapping("image", "query", "label"),  # ChartQA
)


def load(path: Path, columns: ColumnMapping | None = None, system_prompt: str | None = None) -> list[Conversation]:
    rows = list(_rows(path))
    available = set(rows[0][1]) if rows else set()
    mapping = columns or _guess_mapping(available, path)
    missing = [name for name in (mapping.image, mapping.question, mapping.answer) if name not in available and rows]
    if missing:
        raise DatasetFormatError(path, f"column(s) {', '.join(missing)} not found; columns are {sorted(available)}")
    base_dir = path if path.is_dir() else path.parent
    with numbered_as("row"):
        return [_conversation(row, number, path, base_dir, mapping, system_prompt) for number, row in rows]


def _guess_mapping(available: set[str], path: Path) -> ColumnMapping:
    for mapping in KNOWN_MAPPINGS:
        if {mapping.image, mapping.question, mapping.answer} <= available:
            return mapping
    raise DatasetFormatError(path, f"cannot tell the image/question/answer columns from {sorted(available)}; "
                                   "name them explicitly")


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    if path.is_dir():
        yield from _saved_dataset_rows(path)
        return
    import pandas as pd

    readers = {
        ".csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
        ".tsv": lambda p: pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False),
        ".parquet": pd.read_parquet,
        ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
    }
    if path.suffix not in readers:
        raise DatasetFormatError(path, f"unsupported table type {path.suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}")
    try:
        frame = readers[path.suffix](path)
    except (ValueError, OSError) as err:
        raise DatasetFormatError(path, f"cannot read table: {err}") from None
    for number, row in enumerate(frame.to_dict(orient="records"), start=1):
        yield number, row


def _saved_dataset_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DatasetFormatError(path, f"not a dataset saved with save_to_disk: {err}") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise DatasetFormatError(path, f"holds several splits ({', '.join(dataset)}); point at one split's directory")
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):  # keep the encoded bytes rather than decoding every image now
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    for number, row in enumerate(dataset, start=1):
        yield number, row


def _conversation(row: dict, number: int, path: Path, base_dir: Path, mapping: ColumnMapping,
                  system_prompt: str | None) -> Conversation:
    question = _text_cell(row, mapping.question, number, path)
    answer = _text_cell(row, mapping.answer, number, path)
    image = _image_cell(row.get(mapping.image), number, path, base_dir, mapping.image)
    messages = [] if system_prompt is None else [Message("system", (TextPart(system_prompt),))]
    messages += [
        Message("user", (ImagePart(image), TextPart(question))),
        Message("assistant", (TextPart(answer),)),
    ]
    return build_conversation(messages, path=path, line=number)


def _text_cell(row: dict, column: str, number: int, path: Path) -> str:
    value = row.get(column)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # numbers, not NaN
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DatasetFormatError(path, "expected non-empty text", line=number, field=column)
    return value


def _image_cell(value: object, number: int, path: Path, base_dir: Path, column: str) -> ImageRef:
    where = {"file": path, "line": number, "field": column}
    if isinstance(value, dict):  # a datasets Image value
        if value.get("bytes"):
            return image_from_bytes(value["bytes"], **where)
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return image_from_bytes(value, **where)
    if hasattr(value, "save"):  # a decoded PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")  # type: ignore[union-attr]
        return image_from_bytes(buffer.getvalue(), **where)
    return image_from_path(value, base_dir, **where)
