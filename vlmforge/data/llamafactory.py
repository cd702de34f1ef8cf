"""A LLaMA-Factory `dataset_info.json` entry, resolved as LLaMA-Factory's `DatasetAttr.join` does.

`file_name` is relative to the dataset_info.json's directory (LLaMA-Factory's `dataset_dir`) and may name a
folder of files of one type; image paths are relative to `dataset_dir` too (its default `media_dir`).
`formatting` defaults to alpaca. When an entry has `columns`, every column it does not name is not read
(LLaMA-Factory sets each to None); without `columns` the defaults apply (instruction/input/output, or
conversations). `tags` likewise replace all tags at once. What this trainer cannot do is refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .alpaca import AlpacaLayout
from .confine import resolved_inside
from .errors import DatasetFormatError
from .readers import JSON_SUFFIXES, TABLE_SUFFIXES
from .sharegpt import ShareGptLayout

DATA_CONFIG = "dataset_info.json"
_REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_UNSUPPORTED_COLUMNS = {"videos": "video inputs", "audios": "audio inputs", "chosen": "preference (ranking) data",
                        "rejected": "preference (ranking) data", "kto_tag": "KTO feedback data"}


@dataclass(frozen=True)
class LlamaFactoryDataset:
    name: str
    dataset_dir: Path
    files: tuple[Path, ...]
    formatting: str  # "alpaca" or "sharegpt"
    layout: AlpacaLayout | ShareGptLayout
    reason: str


def is_llamafactory_config(path: Path) -> bool:
    """A dataset_info.json, or a directory holding one that is not a `datasets` save_to_disk directory (which
    writes a dataset_info.json of its own next to state.json)."""
    if path.is_dir():
        return (path / DATA_CONFIG).is_file() and not (path / "state.json").is_file()
    return path.name == DATA_CONFIG and not (path.parent / "state.json").is_file()


def resolve(path: Path, dataset_name: str | None) -> LlamaFactoryDataset:
    config = path / DATA_CONFIG if path.is_dir() else path
    try:
        info = json.loads(config.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DatasetFormatError(config, f"is not valid JSON ({err})") from None
    if not isinstance(info, dict) or not all(isinstance(entry, dict) for entry in info.values()):
        raise DatasetFormatError(config, "expected an object of dataset entries (LLaMA-Factory dataset_info.json)")
    name = _entry_name(config, info, dataset_name)
    entry = info[name]

    def fail(message: str) -> DatasetFormatError:
        return DatasetFormatError(config, f"dataset {name!r}: {message}")

    for key in _REMOTE_KEYS:
        if key in entry:
            raise fail(f"{key} is not supported: datasets are never downloaded; put the data in a local file "
                       "and name it in file_name")
    if entry.get("ranking"):
        raise fail("ranking (preference data) is not supported: this trainer does supervised fine-tuning")
    if entry.get("num_samples") is not None:
        raise fail("num_samples is not supported; cut the file to the samples you want")
    if entry.get("split", "train") != "train":
        raise fail(f"split {entry['split']!r}: a local file has only the train split")
    if "file_name" not in entry:
        raise fail("has no file_name")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise fail(f"formatting {formatting!r} is not supported; use alpaca or sharegpt")
    columns = entry.get("columns")
    tags = entry.get("tags")
    for key, value in (("columns", columns), ("tags", tags)):
        if value is not None and not isinstance(value, dict):
            raise fail(f"{key} must be an object")
    for column, what in _UNSUPPORTED_COLUMNS.items():
        if columns and columns.get(column):
            raise fail(f"columns.{column}: {what} is not supported")
    dataset_dir = config.parent
    origin = f" (dataset_info.json entry {name!r})"
    layout = (_alpaca(columns, origin) if formatting == "alpaca" else _sharegpt(columns, tags, origin, fail))
    files = _files(dataset_dir, entry["file_name"], fail)
    return LlamaFactoryDataset(name, dataset_dir, files, formatting, layout,
                               f"LLaMA-Factory dataset_info.json entry {name!r} (formatting {formatting})")


def _entry_name(config: Path, info: dict, dataset_name: str | None) -> str:
    if dataset_name is not None:
        if dataset_name not in info:
            raise DatasetFormatError(config, f"has no dataset {dataset_name!r}; it defines {_listing(info)}")
        return dataset_name
    if len(info) == 1:
        return next(iter(info))
    raise DatasetFormatError(config, f"defines {len(info)} datasets; name one ({_listing(info)})")


def _listing(info: dict) -> str:
    names = list(info)
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "") if names else "none"


def _alpaca(columns: dict | None, origin: str) -> AlpacaLayout:
    if columns is None:
        return AlpacaLayout(history=None, system=None, images=None, origin=origin)
    return AlpacaLayout(prompt=columns.get("prompt"), query=columns.get("query"), response=columns.get("response"),
                        history=columns.get("history"), system=columns.get("system"), images=columns.get("images"),
                        tools=columns.get("tools"), origin=origin)


def _sharegpt(columns: dict | None, tags: dict | None, origin: str, fail) -> ShareGptLayout:
    columns = columns if columns is not None else {"messages": "conversations"}
    tags = tags if tags is not None else {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                          "assistant_tag": "gpt", "observation_tag": "observation",
                                          "function_tag": "function_call", "system_tag": "system"}
    if not columns.get("messages"):
        raise fail("columns has no messages: with columns given, LLaMA-Factory reads only the columns named there")
    for tag in ("role_tag", "content_tag", "user_tag", "assistant_tag"):
        if not tags.get(tag):
            raise fail(f"tags has no {tag}: with tags given, LLaMA-Factory takes only the tags named there")
    return ShareGptLayout(
        messages=columns["messages"], images=columns.get("images"), system=columns.get("system"),
        tools=columns.get("tools"), role_tag=tags["role_tag"], content_tag=tags["content_tag"],
        user_tags=(tags["user_tag"],), assistant_tags=(tags["assistant_tag"],), system_tag=tags.get("system_tag"),
        unsupported_tags=tuple(t for t in (tags.get("observation_tag"), tags.get("function_tag")) if t),
        origin=origin,
    )


def _files(dataset_dir: Path, file_name: object, fail) -> tuple[Path, ...]:
    if not isinstance(file_name, str) or not file_name:
        raise fail("file_name must be a non-empty string")
    target = resolved_inside(dataset_dir, dataset_dir / file_name)
    if target is None:
        raise fail(f"file_name {file_name!r} leaves the dataset directory")
    if target.is_file():
        return (target,)
    if not target.is_dir():
        raise fail(f"file_name {file_name!r} does not exist in {dataset_dir}")
    files = sorted(p for p in target.iterdir() if p.is_file() and not p.name.startswith("."))
    if any(resolved_inside(dataset_dir, p) is None for p in files):
        raise fail(f"a file in {file_name!r} is a link that leaves the dataset directory")
    suffixes = {p.suffix.lower() for p in files}
    if not files:
        raise fail(f"file_name {file_name!r} is an empty folder")
    if len(suffixes) != 1 or not suffixes <= set(JSON_SUFFIXES + TABLE_SUFFIXES):
        raise fail(f"the files in {file_name!r} must all be of one type ({', '.join(JSON_SUFFIXES + TABLE_SUFFIXES)}); "
                   f"found {', '.join(sorted(suffixes))}")
    return tuple(files)
