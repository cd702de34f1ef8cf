"""One entry point for every dataset format and layout: `load_dataset` reads it all, `inspect_dataset` only the
first records (what a request handler can afford), both with the same checks and the same errors."""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import alpaca, conversation_jsonl, llamafactory, llava, openai_jsonl, sharegpt, table, trl_messages
from ._records import Parser
from .detect import NO_CHAT_KEYS, DatasetFormat, detect
from .errors import DatasetFormatError
from .images import ImageResolver
from .layouts import Source, open_source
from .readers import RecordFile, record_file
from .table import ColumnMapping
from .types import Conversation, Message, TextPart

_DETECT_RECORDS = 16


@dataclass(frozen=True)
class DatasetSummary:
    """What `inspect_dataset` found: the format and why it was chosen, and how much of the file was checked."""

    format: DatasetFormat
    format_reason: str  # one line, for a job event: "the first record has 'conversations' and ..."
    records_checked: int
    complete: bool  # True when the dataset has no records beyond those checked
    source: str  # "JSONL file", "split train of 3 Parquet shard(s) (...)"


_Located = tuple[RecordFile, int, dict]  # the file, the record's number in it, the record


@dataclass(frozen=True)
class _Plan:
    source: Source
    format: DatasetFormat
    reason: str
    parse: Parser


def load_dataset(
    path: str | Path,
    dataset_format: DatasetFormat | str | None = None,
    *,
    columns: ColumnMapping | None = None,
    system_prompt: str | None = None,
    dataset_name: str | None = None,
    split: str | None = None,
) -> list[Conversation]:
    """Loads a whole dataset (file, `datasets` directory, Parquet shards, or LLaMA-Factory dataset_info.json
    entry). `split` picks one of several splits (default: the only one, else train); a plain file ignores it.
    `system_prompt` is given to samples that have no system message. Raises DatasetFormatError on bad input."""
    path = Path(path)
    with _as_format_errors(path), _without_cyclic_gc():
        plan = _plan(path, dataset_format, columns, dataset_name, split)
        conversations = list(_conversations(plan, _all_records(plan.source), system_prompt))
    if not conversations:
        raise DatasetFormatError(path, "dataset is empty")
    return conversations


def inspect_dataset(
    path: str | Path,
    dataset_format: DatasetFormat | str | None = None,
    *,
    columns: ColumnMapping | None = None,
    dataset_name: str | None = None,
    split: str | None = None,
    max_records: int = 16,
) -> DatasetSummary:
    """Checks the first `max_records` records exactly as `load_dataset` would, reading no further than that."""
    path = Path(path)
    with _as_format_errors(path):
        plan = _plan(path, dataset_format, columns, dataset_name, split)
        records = _all_records(plan.source)
        # Streamed: any max_records (a whole file, too) holds one record at a time, and nothing past it is read.
        checked = sum(1 for _ in _conversations(plan, itertools.islice(records, max(max_records, 1)), None))
        if not checked:
            raise DatasetFormatError(path, "dataset is empty")
        complete = next(records, None) is None
    return DatasetSummary(plan.format, plan.reason, checked, complete, plan.source.description)


def detect_format(path: str | Path, *, dataset_name: str | None = None, split: str | None = None) -> DatasetFormat:
    """The format `load_dataset` would read `path` in (see `inspect_dataset` for the reason too)."""
    path = Path(path)
    with _as_format_errors(path):
        return _plan(path, None, None, dataset_name, split).format


@contextlib.contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """A million samples are some ten million small objects, none in a cycle; the cyclic collector would walk all
    of those held so far again and again while they are made (a third of the load time at 100k rows). Reference
    counting still frees everything; the collector is back on (if it was on) as soon as the load ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _as_format_errors:
    """Unreadable input (not UTF-8, a directory where a file should be, no permission) is a format error."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> None:
        if not self.path.exists():
            raise DatasetFormatError(self.path, "file not found")

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, UnicodeDecodeError):
            raise DatasetFormatError(self.path, "is not UTF-8 text") from None
        if isinstance(error, OSError):
            raise DatasetFormatError(self.path, f"cannot be read as a dataset "
                                                f"({error.strerror or type(error).__name__})") from None
        return False


def _plan(path: Path, dataset_format: DatasetFormat | str | None, columns: ColumnMapping | None,
          dataset_name: str | None, split: str | None) -> _Plan:
    chosen = _format_named(path, dataset_format)
    if llamafactory.is_llamafactory_config(path):
        return _llamafactory_plan(path, chosen, columns, dataset_name)
    if dataset_name is not None:
        raise DatasetFormatError(path, f"dataset_name {dataset_name!r} names an entry of a LLaMA-Factory "
                                       "dataset_info.json, and this is not one")
    source = open_source(path, split)
    first_records = [record for _, _, record in itertools.islice(_all_records(source), _DETECT_RECORDS)]
    if not first_records:
        raise DatasetFormatError(path, "dataset is empty")
    if chosen is not None:
        reason = "named by the caller"
    elif columns is not None:
        chosen, reason = DatasetFormat.TABLE, "columns were named"
    else:
        chosen, reason = detect(path, first_records)
    if columns is not None and chosen is not DatasetFormat.TABLE:
        raise DatasetFormatError(path, f"columns name a table's image/question/answer columns; the {chosen.value} "
                                       "format has none")
    images = ImageResolver(source.images_dir)
    try:
        parse = _parser(chosen, first_records[0], source, columns, images)
    except DatasetFormatError as err:
        if reason != NO_CHAT_KEYS or source.files[0].path.suffix.lower() not in (".json", ".jsonl"):
            raise
        raise DatasetFormatError(err.path, f"{err.reason}; nor is it a chat layout ({reason})") from None
    return _Plan(source, chosen, f"{chosen.value}: {reason}; {source.description}", parse)


def _format_named(path: Path, dataset_format: DatasetFormat | str | None) -> DatasetFormat | None:
    if not dataset_format:
        return None
    try:
        return DatasetFormat(dataset_format)
    except ValueError:
        names = ", ".join(f.value for f in DatasetFormat)
        raise DatasetFormatError(path, f"unknown dataset format {dataset_format!r}; use one of {names}") from None


def _parser(chosen: DatasetFormat, first: dict, source: Source, columns: ColumnMapping | None,
            images: ImageResolver) -> Parser:
    if chosen is DatasetFormat.TABLE:
        return table.parser(first, source.files[0].path, columns, images)
    if chosen is DatasetFormat.SHAREGPT:
        return sharegpt.parser(sharegpt.bare_layout(first), images)
    if chosen is DatasetFormat.ALPACA:
        return alpaca.parser(alpaca.AlpacaLayout(), images)
    factories = {
        DatasetFormat.CONVERSATION: conversation_jsonl.parser,
        DatasetFormat.LLAVA: llava.parser,
        DatasetFormat.TRL_MESSAGES: trl_messages.parser,
    }
    if chosen is DatasetFormat.OPENAI:
        return openai_jsonl.parse
    return factories[chosen](images)


def _llamafactory_plan(path: Path, chosen: DatasetFormat | None, columns: ColumnMapping | None,
                       dataset_name: str | None) -> _Plan:
    entry = llamafactory.resolve(path, dataset_name)
    entry_format = DatasetFormat.ALPACA if entry.formatting == "alpaca" else DatasetFormat.SHAREGPT
    if chosen not in (None, entry_format):
        raise DatasetFormatError(path, f"dataset {entry.name!r} is {entry.formatting} in dataset_info.json, "
                                       f"not {chosen.value}")
    if columns is not None:
        raise DatasetFormatError(path, "columns come from dataset_info.json for a LLaMA-Factory dataset")
    source = Source(tuple(record_file(file) for file in entry.files), entry.dataset_dir,
                    f"{len(entry.files)} file(s) under {entry.dataset_dir.name or entry.dataset_dir}")
    images = ImageResolver(entry.dataset_dir)
    parse = (alpaca.parser(entry.layout, images) if isinstance(entry.layout, alpaca.AlpacaLayout)
             else sharegpt.parser(entry.layout, images))
    return _Plan(source, entry_format, f"{entry_format.value}: {entry.reason}", parse)


def _all_records(source: Source) -> Iterator[_Located]:
    for record_file in source.files:
        for number, record in record_file.read():
            yield record_file, number, record


def _conversations(plan: _Plan, records: Iterable[_Located], system_prompt: str | None) -> Iterator[Conversation]:
    system = Message("system", (TextPart(system_prompt),)) if system_prompt else None
    parse = plan.parse
    unit = None
    try:
        for record_file, number, record in records:
            unit = record_file.unit
            conversation = parse(record, record_file.path, number)
            if system is not None and conversation.messages[0].role != "system":
                conversation = Conversation((system, *conversation.messages), conversation.source)
            yield conversation
    except DatasetFormatError as err:  # a record's number in its file's own unit: line, record or row
        if err.line is None or unit is None:
            raise
        raise DatasetFormatError(err.path, err.reason, line=err.line, field=err.field, unit=unit) from None
