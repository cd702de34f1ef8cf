"""Where a dataset's records are: one file, or a Hugging Face `datasets` layout on disk, with its split chosen.

- a file: JSON, JSONL, CSV, TSV, Parquet;
- `save_to_disk` of a `Dataset` (`state.json` + `data-*.arrow`) or of a `DatasetDict` (`dataset_dict.json` + one
  such directory per split);
- a directory of Parquet shards as the hub stores them (`data/train-00000-of-00003.parquet`, `test.parquet`,
  `train/0000.parquet`), the split taken from the file (or folder) names.

Split names follow `datasets`' own keywords, so asking for "validation" finds ChartQA's `val` shards.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .confine import resolved_inside
from .errors import DatasetFormatError
from .readers import RecordFile, record_file

_SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z][\w.]*?)(?:[-_.]\d+(?:-of-\d+)?)?$")


@dataclass(frozen=True)
class Source:
    files: tuple[RecordFile, ...]
    images_dir: Path  # image paths in the records are relative to this directory
    description: str  # for the format reason: "split train of a saved DatasetDict"


def canonical_split(name: str) -> str:
    lowered = name.lower()
    return next((split for split, words in _SPLIT_KEYWORDS.items() if lowered in words), lowered)


def open_source(path: Path, split: str | None) -> Source:
    if not path.is_dir():
        return Source((record_file(path),), path.parent, path.suffix.lstrip(".").upper() + " file")
    if (path / "dataset_dict.json").is_file():
        return _saved_dataset_dict(path, split)
    if (path / "state.json").is_file():
        return Source(_saved_dataset_files(path), path, "a dataset saved with save_to_disk")
    shards = _find_shards(path)
    if shards:
        return _parquet_shards(path, shards, split)
    raise DatasetFormatError(path, "is a directory but not a dataset: no dataset_info.json (LLaMA-Factory), "
                                   "dataset_dict.json / state.json (save_to_disk) or .parquet shards inside")


def _choose_split(path: Path, present: list[str], split: str | None) -> str:
    """The split asked for; with none asked, the only split, else "train" (what training wants by default)."""
    by_canonical = {canonical_split(name): name for name in present}
    names = ", ".join(present)
    if split is not None:
        if canonical_split(split) not in by_canonical:
            raise DatasetFormatError(path, f"has no split {split!r}; splits present: {names}")
        return by_canonical[canonical_split(split)]
    if len(present) == 1:
        return present[0]
    if "train" in by_canonical:
        return by_canonical["train"]
    raise DatasetFormatError(path, f"holds several splits ({names}) and none is train; name the split")


def _saved_dataset_dict(path: Path, split: str | None) -> Source:
    try:
        present = list(json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"])
    except (ValueError, KeyError, TypeError):
        raise DatasetFormatError(path / "dataset_dict.json", "is not a datasets DatasetDict description") from None
    chosen = _choose_split(path, present, split)
    return Source(_saved_dataset_files(path / chosen, root=path), path / chosen,
                  f"split {chosen} of a DatasetDict saved with save_to_disk (splits: {', '.join(present)})")


def _saved_dataset_files(path: Path, root: Path | None = None) -> tuple[RecordFile, ...]:
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise DatasetFormatError(path / "state.json", "is not a datasets save_to_disk state file") from None
    if state.get("_indices_data_files"):
        raise DatasetFormatError(path, "was saved with an indices mapping; save it again after flatten_indices()")
    files = []
    for name in names:
        shard = path / name
        inside = resolved_inside(root or path, shard)
        if Path(name).is_absolute() or ".." in Path(name).parts or inside is None or not shard.is_file():
            raise DatasetFormatError(path / "state.json", f"names a data file {name!r} that is not in the directory")
        files.append(record_file(shard))
    return tuple(files)


def _find_shards(path: Path) -> list[Path]:
    """Top-level shards, the hub's `data/` tree, and split-named folders; never a walk of the whole tree (an
    images folder beside the shards may hold a million files)."""
    found = set(path.glob("*.parquet"))
    for child in path.iterdir():
        if child.is_dir() and (child.name in ("data", "default") or canonical_split(child.name) in _SPLIT_KEYWORDS):
            found.update(child.rglob("*.parquet"))
    shards = sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts))
    for shard in shards:
        if resolved_inside(path, shard) is None:
            raise DatasetFormatError(shard, "is a link to a file outside the dataset directory")
    return shards


def _shard_split(root: Path, shard: Path) -> str:
    match = _SHARD_NAME.match(shard.stem)
    if match and canonical_split(match.group("split")) in _SPLIT_KEYWORDS:
        return match.group("split")
    parent = shard.parent
    if parent != root and canonical_split(parent.name) in _SPLIT_KEYWORDS:
        return parent.name
    return match.group("split") if match else shard.stem


def _parquet_shards(path: Path, shards: list[Path], split: str | None) -> Source:
    by_split: dict[str, list[Path]] = {}
    for shard in shards:
        by_split.setdefault(_shard_split(path, shard), []).append(shard)
    if not any(canonical_split(name) in _SPLIT_KEYWORDS for name in by_split):  # chunk-1.parquet, ...: one dataset
        return Source(tuple(record_file(shard) for shard in shards), path,
                      f"{len(shards)} Parquet shard(s) without split names")
    chosen = _choose_split(path, list(by_split), split)
    chosen_shards = by_split[chosen]
    listing = f"splits: {', '.join(by_split)}" if len(by_split) > 1 else "the only split"
    return Source(tuple(record_file(shard) for shard in chosen_shards), path,
                  f"split {chosen} of {len(chosen_shards)} Parquet shard(s) ({listing})")
