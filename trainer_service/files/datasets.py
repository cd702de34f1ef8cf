"""Which dataset an extracted archive holds, and the one background validation of an uploaded dataset.

An archive holds one of: a single dataset file at its top level (images beside it, referenced by relative
paths); a LLaMA-Factory `dataset_info.json` naming the dataset file; or a Hugging Face `datasets` layout (a
`save_to_disk` directory, or Parquet shards under `data/`). A top level that is a single directory (as `tar czf
x.tgz mydata/` makes) is looked into. Anything else is refused with the candidates it could be.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..child_process import call_json_child
from ..errors import InvalidArgumentError
from .uploads import DATASET_SUFFIXES

LLAMAFACTORY_INFO = "dataset_info.json"
_HF_SAVED_MARKERS = ("dataset_dict.json", "state.json")
_IGNORED = ("__MACOSX", ".DS_Store")


@dataclass(frozen=True)
class DatasetLocation:
    path: Path  # what load_dataset is given
    dataset_name: str | None = None  # the dataset_info.json entry, for LLaMA-Factory layouts


def locate_dataset(extracted: Path, *, name: str) -> DatasetLocation:
    """Finds the dataset in an extracted archive (`name`: the client's file name, for messages)."""
    root = extracted
    while len(entries := _entries(root)) == 1 and entries[0].is_dir():
        root = entries[0]
    if any((root / marker).is_file() for marker in _HF_SAVED_MARKERS):
        return DatasetLocation(root)
    if (root / LLAMAFACTORY_INFO).is_file() and (found := _llamafactory(root, name)) is not None:
        return found
    files = [entry for entry in _entries(root) if entry.is_file() and entry.name.lower().endswith(DATASET_SUFFIXES)]
    if len(files) == 1:
        return DatasetLocation(files[0])
    if len(files) > 1:
        listed = ", ".join(sorted(entry.name for entry in files))
        raise InvalidArgumentError(name, f"holds several dataset files at its top level ({listed}); upload one "
                                   "per archive, or add a dataset_info.json naming it")
    shards = root / "data"
    if shards.is_dir() and any(shards.glob("*.parquet")):
        return DatasetLocation(shards)
    raise InvalidArgumentError(name, f"holds no dataset: expected one {'/'.join(DATASET_SUFFIXES)} file at its "
                               "top level, a LLaMA-Factory dataset_info.json, or a Hugging Face datasets layout "
                               "(save_to_disk, or data/*.parquet)")


def _entries(directory: Path) -> list[Path]:
    return [entry for entry in directory.iterdir() if entry.name not in _IGNORED and not entry.name.startswith("._")]


def _llamafactory(root: Path, name: str) -> DatasetLocation | None:
    """None when the file is not LLaMA-Factory's (no entry has a file_name), e.g. our own generator's summary."""
    info_path = root / LLAMAFACTORY_INFO
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidArgumentError(name, f"{LLAMAFACTORY_INFO} is not valid JSON ({err})") from None
    if not isinstance(info, dict):
        raise InvalidArgumentError(name, f"{LLAMAFACTORY_INFO} must be an object of dataset entries")
    named = {key: entry["file_name"] for key, entry in info.items()
             if isinstance(entry, dict) and isinstance(entry.get("file_name"), str)}
    if not named:
        return None
    # The repository's own data/dataset_info.json lists dozens of datasets; the archive holds the files of some.
    present = sorted(key for key, file_name in named.items() if (root / file_name).exists())
    if len(present) == 1:
        return DatasetLocation(info_path, present[0])
    if not present:
        raise InvalidArgumentError(name, f"{LLAMAFACTORY_INFO} names no file_name that is in the archive")
    raise InvalidArgumentError(name, f"{LLAMAFACTORY_INFO} names {len(present)} datasets whose files are in the "
                               f"archive ({', '.join(present)}); upload one per archive")


@dataclass(frozen=True)
class Validation:
    record_count: int | None
    error_message: str | None


def validate_in_child(location: DatasetLocation) -> Validation:
    """`validate_dataset` in a child process: a million-row upload takes no GIL and no memory from the server."""
    answer = call_json_child(__name__, {"path": str(location.path), "dataset_name": location.dataset_name})
    return Validation(answer["record_count"], answer["error_message"])


def validate_dataset(location: DatasetLocation) -> Validation:
    """Loads the whole dataset once. The error is the loader's one-line file/line/field message."""
    from vlmforge.data import DatasetFormatError, load_dataset  # heavy (pandas, PIL): only where validation runs

    try:
        kwargs = {"dataset_name": location.dataset_name} if location.dataset_name else {}
        records = load_dataset(location.path, **kwargs)
    except DatasetFormatError as err:
        return Validation(None, str(err))
    return Validation(len(records), None)


if __name__ == "__main__":
    import dataclasses
    import sys

    request = json.load(sys.stdin)
    print(json.dumps(dataclasses.asdict(validate_dataset(DatasetLocation(Path(request["path"]),
                                                                         request["dataset_name"])))))
