"""A finished job's artifacts as one tar stream, produced piece by piece: tarfile makes each member's header
(`TarInfo.tobuf`), the file's bytes follow as they are read, so neither memory nor disk ever holds the whole tar
(a merged 7B model is 15 GB). Members are `adapter/...` and, on request, `merged_model/...`."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from ..domain import JobStatus
from ..errors import FailedPreconditionError

PIECE_BYTES = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE


def artifact_dirs(job, *, include_merged_model: bool) -> list[tuple[str, Path]]:
    """(name in the tar, directory) of a succeeded job's adapter and, when asked, merged model."""
    if job.status is not JobStatus.SUCCEEDED:
        raise FailedPreconditionError(f"job {job.id} is {job.status.value}; only a succeeded job has artifacts")
    dirs = [("adapter", job.result.get("adapter_path"))]
    if include_merged_model:
        dirs.append(("merged_model", job.result.get("merged_model_path")))
    for label, path in dirs:
        if not path or not Path(path).is_dir():
            raise FailedPreconditionError(f"job {job.id} has no {label.replace('_', ' ')} directory on this trainer")
    return [(label, Path(path)) for label, path in dirs]


class TarStream:
    """Iterates the tar's bytes in pieces of at most PIECE_BYTES; `sha256` and `bytes` are final once done."""

    def __init__(self, dirs: list[tuple[str, Path]]):
        self._dirs = dirs
        self._hasher = hashlib.sha256()
        self.bytes = 0

    @property
    def sha256(self) -> str:
        return self._hasher.hexdigest()

    def __iter__(self) -> Iterator[bytes]:
        pending = bytearray()
        for piece in self._raw():
            pending += piece
            while len(pending) >= PIECE_BYTES:
                yield self._count(bytes(pending[:PIECE_BYTES]))
                del pending[:PIECE_BYTES]
        if pending:
            yield self._count(bytes(pending))

    def _count(self, piece: bytes) -> bytes:
        self._hasher.update(piece)
        self.bytes += len(piece)
        return piece

    def _raw(self) -> Iterator[bytes]:
        for label, root in self._dirs:
            yield _header(label, root, is_dir=True)
            for path in _files(root):
                size = path.stat().st_size
                yield _header(f"{label}/{path.relative_to(root).as_posix()}", path, size=size)
                yield from _contents(path, size)
                if size % _BLOCK:
                    yield bytes(_BLOCK - size % _BLOCK)
        yield bytes(2 * _BLOCK)  # the end-of-archive marker


def _files(root: Path) -> list[Path]:
    """Regular files under root, sorted so the same artifacts always give the same tar; links are left out."""
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        found += [Path(directory, name) for name in sorted(names) if Path(directory, name).is_file()
                  and not Path(directory, name).is_symlink()]
    return found


def _header(name: str, path: Path, *, size: int = 0, is_dir: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.size = size
    info.mtime = int(path.stat().st_mtime)
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _contents(path: Path, size: int) -> Iterator[bytes]:
    sent = 0
    with open(path, "rb") as source:
        while sent < size and (block := source.read(min(PIECE_BYTES, size - sent))):
            sent += len(block)
            yield block
    if sent != size:  # the file shrank while it was sent: the header promised `size` bytes
        raise FailedPreconditionError(f"{path.name} changed while it was being sent; download again")
