"""What an upload sends: a file as it is, or a directory as a tar stream made on the fly.

The Files API wants the content's sha256 before the first byte, and a resumed upload restarts at a byte offset,
so a source can be read from any offset as often as needed. A directory's tar stream is deterministic (sorted
names, the files' own sizes and mtimes, no owners), so the bytes at an offset are the same on every pass; if a
file changes between passes the trainer's sha256 check refuses the upload rather than storing a mix."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_CHUNK_BYTES = 4 * 1024 * 1024  # the Files API's limit per upload message
_READ_BYTES = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class UploadSource:
    path: Path
    filename: str  # what the trainer is told: a name, never a path
    size: int
    sha256: str
    exclude: frozenset[str] = frozenset()  # a directory's relative paths left out of its tar

    def chunks(self, offset: int, chunk_bytes: int) -> Iterator[bytes]:
        """The content from `offset` on, in pieces of exactly `chunk_bytes` (the last may be shorter)."""
        if not self.path.is_dir():
            with open(self.path, "rb") as file:
                file.seek(offset)
                while chunk := file.read(chunk_bytes):
                    yield chunk
            return
        pending = bytearray()
        for piece in _skip(_tar_stream(self.path, self.exclude), offset):
            pending += piece
            while len(pending) >= chunk_bytes:
                yield bytes(pending[:chunk_bytes])
                del pending[:chunk_bytes]
        if pending:
            yield bytes(pending)


def source_for(path: str | os.PathLike, *, exclude: frozenset[str] = frozenset()) -> UploadSource:
    """Hashes the content once (a directory: its tar stream). Raises ValueError for what cannot be uploaded."""
    path = Path(path)
    if path.is_dir():
        digest, size = hashlib.sha256(), 0
        for piece in _tar_stream(path, exclude):
            digest.update(piece)
            size += len(piece)
        return UploadSource(path, f"{path.resolve().name or 'dataset'}.tar", size, digest.hexdigest(), exclude)
    if not path.is_file():
        raise ValueError(f"{path}: no such file or directory")
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while piece := file.read(_READ_BYTES):
            digest.update(piece)
            size += len(piece)
    return UploadSource(path, path.name, size, digest.hexdigest())


def _skip(pieces: Iterator[bytes], offset: int) -> Iterator[bytes]:
    for piece in pieces:
        if offset >= len(piece):
            offset -= len(piece)
            continue
        yield piece[offset:]
        offset = 0


def _tar_stream(root: Path, exclude: frozenset[str] = frozenset()) -> Iterator[bytes]:
    """A POSIX (pax) tar of `root`'s contents, names relative to it. Symlinked files are stored as the file they
    point to (the trainer refuses links in archives); a symlinked directory is refused."""
    for relative, full in _walk(root):
        if exclude and _excluded(relative, exclude):
            continue
        info = os.stat(full)  # follows a symlinked file
        member = tarfile.TarInfo(relative)
        member.mtime, member.uid, member.gid, member.uname, member.gname = int(info.st_mtime), 0, 0, "", ""
        if stat.S_ISDIR(info.st_mode):
            member.type, member.mode = tarfile.DIRTYPE, 0o755
            yield member.tobuf(tarfile.PAX_FORMAT)
            continue
        member.size, member.mode = info.st_size, 0o644
        yield member.tobuf(tarfile.PAX_FORMAT)
        sent = 0
        with open(full, "rb") as file:
            while sent < member.size and (piece := file.read(min(_READ_BYTES, member.size - sent))):
                sent += len(piece)
                yield piece
        if sent != member.size:
            raise ValueError(f"{full}: changed size while being read")
        if member.size % _BLOCK:
            yield b"\0" * (_BLOCK - member.size % _BLOCK)
    yield b"\0" * (2 * _BLOCK)  # end of archive


def _excluded(relative: str, exclude: frozenset[str]) -> bool:
    """The path itself, or a directory above it, is excluded."""
    parts = relative.split("/")
    return any("/".join(parts[:end]) in exclude for end in range(1, len(parts) + 1))


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        base = Path(directory)
        for name in subdirectories:
            if (base / name).is_symlink():
                raise ValueError(f"{base / name}: a symlinked directory cannot be uploaded; copy it in")
            yield (base / name).relative_to(root).as_posix(), base / name
        for name in sorted(files):
            full = base / name
            if not full.is_file():  # a dangling link, a socket, a fifo
                raise ValueError(f"{full}: not a regular file")
            yield full.relative_to(root).as_posix(), full
