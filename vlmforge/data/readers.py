"""Reading records (dicts) out of one data file, lazily: the first records of a huge file cost what they weigh.

Each reader yields `(number, record)`; the number is what errors cite, in the file's own unit (`RecordFile.unit`):
a JSONL line, a JSON array's record, a table's row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetFormatError

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".arrow")
JSON_SUFFIXES = (".json", ".jsonl")
_CHUNK_CHARS = 1 << 20


@dataclass(frozen=True)
class RecordFile:
    path: Path
    unit: str  # "line", "record" or "row"
    read: Callable[[], Iterator[tuple[int, dict]]]


def record_file(path: Path) -> RecordFile:
    """The reader for one file, chosen by its suffix (and, for JSON, by its first character)."""
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        if _first_char(path) == "[":
            return RecordFile(path, "record", lambda: read_json_array(path))
        return RecordFile(path, "line", lambda: read_jsonl(path))
    if suffix in (".csv", ".tsv"):
        return RecordFile(path, "row", lambda: read_csv(path, "\t" if suffix == ".tsv" else ","))
    if suffix == ".parquet":
        return RecordFile(path, "row", lambda: read_parquet(path))
    if suffix == ".arrow":
        return RecordFile(path, "row", lambda: read_arrow_stream(path))
    raise DatasetFormatError(path, f"cannot tell the format of a {suffix or 'suffix-less'} file; "
                                   f"use one of {', '.join(JSON_SUFFIXES + TABLE_SUFFIXES)}")


def _first_char(path: Path) -> str:
    """JSON Lines saved as .json and JSON arrays saved as .jsonl both occur; `datasets` reads either."""
    with path.open("r", encoding="utf-8") as handle:
        while chunk := handle.read(4096):
            stripped = chunk.lstrip("\ufeff \t\r\n")
            if stripped:
                return stripped[0]
    return ""


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yields (1-based line number, object) for each non-blank line."""
    loads = json.loads
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.isspace():
                continue
            try:
                record = loads(line)
            except json.JSONDecodeError as err:
                raise DatasetFormatError(path, f"invalid JSON ({err.msg} at column {err.colno})",
                                         line=line_number) from None
            if not isinstance(record, dict):
                raise DatasetFormatError(path, f"expected a JSON object, got {type(record).__name__}", line=line_number)
            yield line_number, record


def read_json_array(path: Path) -> Iterator[tuple[int, dict]]:
    """Yields (1-based record number, object) from a JSON array, decoding one record at a time from a sliding
    buffer: a 1 GB file (LLaVA's mix665k) is never held whole, and its first records come back at once."""
    decoder = json.JSONDecoder()
    with path.open("r", encoding="utf-8") as handle:
        buffer, position, lines_before, done = "", 0, 0, False

        def refill() -> bool:
            nonlocal buffer, position, lines_before
            chunk = handle.read(_CHUNK_CHARS)
            lines_before += buffer.count("\n", 0, position)
            buffer, position = buffer[position:] + chunk, 0
            return bool(chunk)

        def skip_space() -> str:
            nonlocal position, done
            while True:
                while position < len(buffer) and buffer[position] in " \t\r\n\ufeff":
                    position += 1
                if position < len(buffer):
                    return buffer[position]
                if done or not refill():
                    done = True
                    return ""

        def fail(message: str, at: int) -> DatasetFormatError:
            line = lines_before + buffer.count("\n", 0, at) + 1
            return DatasetFormatError(path, f"{message} (at line {line})")

        if skip_space() != "[":
            raise DatasetFormatError(path, "expected a JSON array of records or JSON Lines")
        position += 1
        number = 0
        while True:
            char = skip_space()
            if char == "]":
                position += 1
                if skip_space():
                    raise fail("invalid JSON (extra data after the array)", position)
                return
            if number:
                if char != ",":
                    raise fail(f"invalid JSON (expected ',' or ']' after record {number})", position)
                position += 1
                char = skip_space()
            if not char:
                raise fail("invalid JSON (the array is not closed)", position)
            while True:
                try:
                    record, end = decoder.raw_decode(buffer, position)
                    break
                except json.JSONDecodeError as err:
                    if done or not refill():  # a record cut by the buffer's end decodes once more text is in
                        done = True
                        raise fail(f"record {number + 1}: invalid JSON ({err.msg})", err.pos) from None
            position = end
            number += 1
            if not isinstance(record, dict):
                raise DatasetFormatError(path, f"expected a JSON object, got {type(record).__name__}", line=number,
                                         unit="record")
            yield number, record


def read_csv(path: Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    """Cells stay strings, empty cells stay empty (no NaN guessing)."""
    with path.open("r", encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle, delimiter=delimiter), start=1):
            yield number, row


def read_parquet(path: Path, batch_rows: int = 1024) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        number = 0
        for batch in parquet.iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pa.ArrowException, OSError) as err:
        raise DatasetFormatError(path, f"cannot read Parquet: {err}") from None


def read_arrow_stream(path: Path) -> Iterator[tuple[int, dict]]:
    """A `datasets` shard written by `save_to_disk` (Arrow IPC stream), memory-mapped, a batch at a time."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            number = 0
            for batch in pa.ipc.open_stream(source):
                for row in batch.to_pylist():
                    number += 1
                    yield number, row
    except (pa.ArrowException, OSError) as err:
        raise DatasetFormatError(path, f"cannot read Arrow data: {err}") from None
