"""Partial uploads on disk, keyed by the content's (sha256, bytes): a resume needs no server-issued state and
survives a trainer restart. Bytes are appended to `partial/<sha256>-<bytes>.part` and hashed as they arrive; a
finished upload whose digest matches is handed to the caller, who renames it into place."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

from ..errors import ConflictError, FailedPreconditionError, InvalidArgumentError, LimitExceededError
from .models import UploadMetadata

MAX_CHUNK_BYTES = 4 * 1024 * 1024
DATASET_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HASH_READ_BYTES = 4 * 1024 * 1024


def check_metadata(meta: UploadMetadata, *, max_upload_bytes: int) -> None:
    """Raises InvalidArgumentError / LimitExceededError for metadata no upload can succeed with."""
    name = meta.filename
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or len(name) > 255:
        raise InvalidArgumentError("metadata.filename", f"{name!r} must be a file name, not a path")
    if not name.lower().endswith(DATASET_SUFFIXES + ARCHIVE_SUFFIXES):
        raise InvalidArgumentError("metadata.filename", f"{name!r}: the extension must be one of "
                                   f"{', '.join(DATASET_SUFFIXES + ARCHIVE_SUFFIXES)}")
    check_content_key(meta.sha256, meta.bytes, prefix="metadata.")
    if meta.bytes > max_upload_bytes:
        raise LimitExceededError("max_upload_bytes", f"{name} is {meta.bytes} bytes; this trainer takes uploads "
                                 f"of at most {max_upload_bytes} bytes")
    if not 0 <= meta.resume_offset <= meta.bytes:
        raise InvalidArgumentError("metadata.resume_offset", f"must be between 0 and bytes ({meta.bytes})")


def check_content_key(sha256: str, size_bytes: int, *, prefix: str = "") -> None:
    """The (sha256, bytes) that names a partial upload on disk: checked before it becomes part of a path."""
    if not _SHA256.match(sha256):
        raise InvalidArgumentError(f"{prefix}sha256", "must be the content's sha256 as 64 lowercase hex digits")
    if size_bytes <= 0:
        raise InvalidArgumentError(f"{prefix}bytes", "must be the content's size, above 0")


class PartialUploads:
    """The directory of partial uploads and the in-process guard that lets one stream at a time append to each."""

    def __init__(self, directory: Path, *, busy_wait_s: float = 5.0):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._busy_wait_s = busy_wait_s
        self._active: set[str] = set()
        self._released = threading.Condition()
        self._admitting = threading.Lock()

    def path(self, sha256: str, size_bytes: int, project: str = "") -> Path:
        """One partial per project and content: a project can neither see nor resume another's."""
        return self.directory / f"{sha256}-{size_bytes}{'@' + project if project else ''}.part"

    def committed_bytes(self, sha256: str, size_bytes: int, project: str = "") -> int:
        try:
            return min(self.path(sha256, size_bytes, project).stat().st_size, size_bytes)
        except FileNotFoundError:
            return 0

    def declared_bytes(self, project: str, *, excluding: Path, abandoned_before: float) -> tuple[int, int]:
        """The sizes the project's partial uploads other than `excluding` declared, and how many they are. One no
        stream claims and nobody wrote to since `abandoned_before` (epoch s) is removed instead, as the start-up
        sweep would: an abandoned upload must not hold a project's quota until the next restart."""
        held = count = 0
        with self._released:  # a stream that claims a partial next finds it either whole or gone
            for partial in self.directory.iterdir():
                declared = _declared(partial.name, project)
                if declared is None or partial == excluding:
                    continue
                try:
                    if partial.name not in self._active and partial.stat().st_mtime < abandoned_before:
                        partial.unlink()
                        continue
                except FileNotFoundError:
                    continue  # finished or removed meanwhile
                held, count = held + declared, count + 1
        return held, count

    def open(self, meta: UploadMetadata, *, admit=None) -> Upload:
        """Claims the content's partial file and positions it at `meta.resume_offset`. A stream that just broke
        may still hold the claim for a moment: wait for it rather than fail the client's immediate resume.
        `admit()` (a quota check that counts the partials on disk) runs under a lock with the creation of this
        upload's partial file, so two uploads that start together both count each other."""
        key = self.path(meta.sha256, meta.bytes, meta.project).name
        deadline = time.monotonic() + self._busy_wait_s
        with self._released:
            while key in self._active:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConflictError(f"another upload of this content (sha256 {meta.sha256}) is in progress; "
                                        "retry when it has ended")
                self._released.wait(remaining)
            self._active.add(key)
        path = self.path(meta.sha256, meta.bytes, meta.project)
        created = False
        try:
            with self._admitting:
                if admit is not None:
                    admit()
                if not path.exists():
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
                    created = True
            return Upload(meta, path, release=lambda: self._release(key))
        except BaseException:
            if created:  # nothing of it was received: it must not hold the project's quota
                path.unlink(missing_ok=True)
            self._release(key)
            raise

    def _release(self, key: str) -> None:
        with self._released:
            self._active.discard(key)
            self._released.notify_all()


class Upload:
    """One stream's writer: `write` each chunk, then `finish` (digest checked) or `close` (kept for a resume)."""

    def __init__(self, meta: UploadMetadata, path: Path, *, release):
        self.meta, self.path = meta, path
        self._release = release
        held = path.stat().st_size if path.exists() else 0
        if meta.resume_offset > held:
            raise FailedPreconditionError(f"resume_offset {meta.resume_offset} is past the {held} bytes this trainer "
                                          "holds of the content; resume from GetUploadOffset's committed_bytes")
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(self._fd, meta.resume_offset)  # bytes a broken stream wrote past the resume point go
            self._hasher = _hash_prefix(self._fd, meta.resume_offset)
            os.lseek(self._fd, meta.resume_offset, os.SEEK_SET)
        except BaseException:
            os.close(self._fd)
            raise
        self.offset = meta.resume_offset
        # A cancelled stream's handler closes the upload while a pool thread may still be writing its last chunk:
        # the fd must not be closed (and its number reused) under that write.
        self._lock = threading.Lock()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        if self._fd < 0:
            raise ConflictError("this upload stream was closed")
        if len(chunk) > MAX_CHUNK_BYTES:
            raise InvalidArgumentError("chunk", f"{len(chunk)} bytes; chunks are at most {MAX_CHUNK_BYTES} bytes")
        if self.offset + len(chunk) > self.meta.bytes:
            raise InvalidArgumentError("chunk", f"the stream sends more than metadata.bytes ({self.meta.bytes})")
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view):]
        self._hasher.update(chunk)
        self.offset += len(chunk)

    def finish(self) -> Path:
        """Checks size and digest; returns the complete file, which the caller moves away before `close`
        releases the claim. Raises, keeping nothing that cannot be resumed."""
        if self.offset != self.meta.bytes:
            raise InvalidArgumentError("chunk", f"the stream ended after {self.offset} of {self.meta.bytes} bytes; "
                                       f"resume with resume_offset={self.offset}")
        with self._lock:
            os.fsync(self._fd)
        if self._hasher.hexdigest() != self.meta.sha256:
            self.path.unlink(missing_ok=True)  # before the claim is released: another stream may take it next
            self.close()
            raise InvalidArgumentError("metadata.sha256", f"the {self.meta.bytes} bytes received hash to "
                                       f"{self._hasher.hexdigest()}, not {self.meta.sha256}; upload again from 0")
        return self.path

    def close(self) -> None:
        """Idempotent; keeps the partial file for a resume."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                self._release()


def _declared(name: str, project: str) -> int | None:
    """The size a partial's name (`<sha256>-<bytes>[@<project>].part`) declares, when it is the project's."""
    if not name.endswith(".part"):
        return None
    key, _, owner = name[:-len(".part")].partition("@")
    _, _, size = key.partition("-")
    return int(size) if owner == project and size.isdigit() else None


def _hash_prefix(fd: int, size_bytes: int):
    hasher = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    remaining = size_bytes
    while remaining:
        block = os.read(fd, min(_HASH_READ_BYTES, remaining))
        if not block:
            break
        hasher.update(block)
        remaining -= len(block)
    return hasher
