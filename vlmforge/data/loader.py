"""One entry point for every dataset format, with detection when the caller does not name one."""

from __future__ import annotations

import enum
import json
from pathlib import Path

from . import conversation_jsonl, openai_jsonl, sharegpt, table
from .errors import DatasetFormatError
from .table import ColumnMapping
from .types import Conversation


class DatasetFormat(str, enum.Enum):
    CONVERSATION = "conversation"
    OPENAI = "openai"
    TABLE = "table"
    SHAREGPT = "sharegpt"


def load_dataset(
    path: str | Path,
    dataset_format: DatasetFormat | str | None = None,
    *,
    columns: ColumnMapping | None = None,
    system_prompt: str | None = None,
) -> list[Conversation]:
    """Loads a whole dataset file (or saved `datasets` directory). Raises DatasetFormatError on bad input."""
    path = Path(path)
    if not path.exists():
        raise DatasetFormatError(path, "file not found")
    try:
        chosen = DatasetFormat(dataset_format) if dataset_format else detect_format(path)
        conversations = _load(path, chosen, columns, system_prompt)
    except UnicodeDecodeError:
        raise DatasetFormatError(path, "is not UTF-8 text") from None
    except OSError as err:  # a directory where a file is expected, no permission, ...
        raise DatasetFormatError(path, f"cannot be read as a dataset ({err.strerror or type(err).__name__})") from None
    if not conversations:
        raise DatasetFormatError(path, "dataset is empty")
    return conversations


def _load(path: Path, chosen: DatasetFormat, columns: ColumnMapping | None,
          system_prompt: str | None) -> list[Conversation]:
    if chosen is DatasetFormat.TABLE:
        return table.load(path, columns, system_prompt)
    loaders = {
        DatasetFormat.CONVERSATION: conversation_jsonl.load,
        DatasetFormat.OPENAI: openai_jsonl.load,
        DatasetFormat.SHAREGPT: sharegpt.load,
    }
    return loaders[chosen](path)


def detect_format(path: Path) -> DatasetFormat:
    """Directories and CSV/TSV/Parquet are tables; JSON is ShareGPT; JSONL is decided by its first record."""
    if path.is_dir() or path.suffix in (".csv", ".tsv", ".parquet"):
        return DatasetFormat.TABLE
    if path.suffix == ".json":
        return DatasetFormat.SHAREGPT
    if path.suffix != ".jsonl":
        raise DatasetFormatError(path, f"cannot tell the format of a {path.suffix or 'suffix-less'} file; "
                                       "name the dataset format")
    first = _first_record(path)
    if "conversations" in first:
        return DatasetFormat.SHAREGPT
    if "messages" not in first:
        return DatasetFormat.TABLE
    content_types = {
        part.get("type")
        for message in first["messages"] if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"] if isinstance(part, dict)
    }
    return DatasetFormat.OPENAI if "image_url" in content_types else DatasetFormat.CONVERSATION


def _first_record(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DatasetFormatError(path, f"invalid JSON ({err.msg})", line=line_number) from None
                return record if isinstance(record, dict) else {}
    raise DatasetFormatError(path, "dataset is empty")
