"""The Files API's value types."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FileStatus = Literal["uploaded", "processed", "error"]
FilePurpose = Literal["fine-tune"]

FILE_ID_PREFIX = "file-"


@dataclass(frozen=True)
class StoredFile:
    """An uploaded file as stored. `dataset_path` is what the trainer loads: the uploaded file itself, or the
    dataset file (or directory) found inside an uploaded archive once it was extracted."""

    id: str
    filename: str
    purpose: FilePurpose
    bytes: int
    sha256: str
    created_at: float  # seconds since the epoch
    status: FileStatus
    record_count: int | None = None
    error_message: str | None = None
    dataset_path: Path | None = None
    dataset_name: str | None = None  # the dataset_info.json entry when dataset_path is a LLaMA-Factory one
    project: str = ""  # of the API key that uploaded it; each project stores its own copy of a content


@dataclass(frozen=True)
class UploadMetadata:
    """The first message of an upload, checked by `FileService.begin_upload`."""

    filename: str
    purpose: FilePurpose
    sha256: str
    bytes: int
    resume_offset: int = 0
    project: str = ""  # set by FileService from the caller, never by the client: keys the partial upload
