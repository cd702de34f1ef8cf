"""Format `table`: one row per question, columns named by the user (or recognised).

Any record file: CSV, TSV, JSONL, Parquet, or a Hugging Face `datasets` layout on disk. MEDPIX-style data maps
`image_id/question/answer`, ChartQA's own schema `image/query/label`, where `label` is a list holding the answer
(the first entry is taken, as TRL's ChartQA notebook reads `sample["label"][0]`). An image cell may hold a path
relative to the table's directory, a `data:` URL, raw bytes, a `datasets` Image value (`{"bytes", "path"}`),
or a list of those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._records import Parser, build_conversation
from .errors import DatasetFormatError
from .images import ImageResolver, image_from_value
from .types import Conversation, ImagePart, Message, Part, TextPart


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


def known_mapping(available: set[str]) -> ColumnMapping | None:
    return next((m for m in KNOWN_MAPPINGS if {m.image, m.question, m.answer} <= available), None)


def parser(first: dict, path: Path, columns: ColumnMapping | None, images: ImageResolver) -> Parser:
    """The mapping is checked against the first record's columns once, not per row."""
    available = set(first)
    mapping = columns or known_mapping(available)
    if mapping is None:
        raise DatasetFormatError(path, f"cannot tell the image/question/answer columns from {sorted(available)}; "
                                       "name them explicitly")
    missing = [name for name in (mapping.image, mapping.question, mapping.answer) if name not in available]
    if missing:
        raise DatasetFormatError(path, f"column(s) {', '.join(missing)} not found; columns are {sorted(available)}")

    def parse(row: dict, file: Path, number: int) -> Conversation:
        question = _text_cell(row, mapping.question, number, file)
        answer = _text_cell(row, mapping.answer, number, file)
        cell = row.get(mapping.image)
        cells = cell if isinstance(cell, (list, tuple)) else [cell]
        if not cells:
            raise DatasetFormatError(file, "expected an image, got an empty list", line=number, field=mapping.image)
        parts: list[Part] = [ImagePart(image_from_value(value, images, file=file, line=number, field=mapping.image))
                             for value in cells]
        messages = [Message("user", (*parts, TextPart(question))), Message("assistant", (TextPart(answer),))]
        return build_conversation(messages, path=file, line=number)

    return parse


def _text_cell(row: dict, column: str, number: int, path: Path) -> str:
    value = row.get(column)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":  # ChartQA's label: [answer]
        if len(value) == 0:  # type: ignore[arg-type]
            raise DatasetFormatError(path, "expected non-empty text, got an empty list", line=number, field=column)
        value = value[0]  # type: ignore[index]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # numbers, not NaN
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DatasetFormatError(path, "expected non-empty text", line=number, field=column)
    return value
