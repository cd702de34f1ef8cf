"""Safe extraction of uploaded dataset archives (.tar, .tar.gz/.tgz, .zip).

Every member is checked before a byte is written: relative paths only (no absolute path, drive letter or `..`),
regular files and directories only (no symlink, hard link, device or FIFO), and caps on the member count, the
declared extracted size and its ratio to the archive's size, so a zip bomb is refused rather than extracted.
While extracting, bytes are counted again: a zip member that inflates past its declared size is refused too.
Extraction writes through our own open() calls, never tarfile/zipfile's extract(), and never keeps modes or owners.
"""

from __future__ import annotations

import gzip
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from ..errors import InvalidArgumentError

ArchiveKind = Literal["tar", "zip"]
_SUFFIX_KINDS: tuple[tuple[str, ArchiveKind], ...] = (
    (".tar.gz", "tar"), (".tgz", "tar"), (".tar", "tar"), (".zip", "zip"))
_COPY_CHUNK_BYTES = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    max_extracted_bytes: int
    max_members: int
    max_compression_ratio: float
    # Below this extracted total the ratio is not checked: a small JSONL compresses 20x and harms no one.
    ratio_floor_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class _Member:
    parts: tuple[str, ...]
    is_dir: bool
    declared_bytes: int
    source: object  # the TarInfo or ZipInfo to read it from


def archive_kind(filename: str) -> ArchiveKind | None:
    """The archive kind a file name says, or None for a plain dataset file."""
    lowered = filename.lower()
    return next((kind for suffix, kind in _SUFFIX_KINDS if lowered.endswith(suffix)), None)


def extract_archive(archive: Path, destination: Path, limits: ArchiveLimits, *, name: str) -> None:
    """Checks every member of `archive`, then extracts it into `destination` (created; must not exist).
    Raises InvalidArgumentError naming the archive (`name`, the client's file name) and the member; nothing is
    left behind on a refusal."""
    kind = archive_kind(name)
    if kind is None:
        raise InvalidArgumentError(name, "not an archive (.tar, .tar.gz, .tgz or .zip)")
    destination.mkdir(parents=True)
    try:
        if kind == "zip":
            _extract_zip(archive, destination, limits, name)
        else:
            _extract_tar(archive, destination, limits, name, compressed=not name.lower().endswith(".tar"))
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def _extract_tar(archive: Path, destination: Path, limits: ArchiveLimits, name: str, *, compressed: bool) -> None:
    try:
        with tarfile.open(archive, "r:gz" if compressed else "r:") as tar:
            members = _checked(_tar_members(tar, limits, name), archive, limits, name)
            for member in members:
                source = tar.extractfile(member.source) if not member.is_dir else None
                _write(destination, member, source, limits, name)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        kind = "tar.gz" if compressed else "tar"
        raise InvalidArgumentError(name, f"not a readable {kind} archive ({err})") from None


def _tar_members(tar: tarfile.TarFile, limits: ArchiveLimits, name: str) -> Iterator[_Member]:
    # Read header by header (not getmembers()), so a refusal stops before the rest of a bomb is inflated.
    while (info := tar.next()) is not None:
        if info.issym():
            raise InvalidArgumentError(name, f"member {info.name!r} is a symbolic link; links are refused")
        if info.islnk():
            raise InvalidArgumentError(name, f"member {info.name!r} is a hard link; links are refused")
        if info.ischr() or info.isblk() or info.isfifo():
            raise InvalidArgumentError(name, f"member {info.name!r} is a device file or FIFO; refused")
        if not (info.isreg() or info.isdir()):
            raise InvalidArgumentError(name, f"member {info.name!r} is not a regular file or directory; refused")
        if (parts := _safe_parts(info.name, name, is_dir=info.isdir())):
            yield _Member(parts, info.isdir(), 0 if info.isdir() else info.size, info)


def _extract_zip(archive: Path, destination: Path, limits: ArchiveLimits, name: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _checked(_zip_members(zf, name), archive, limits, name)
            for member in members:
                if member.is_dir:
                    _write(destination, member, None, limits, name)
                    continue
                with zf.open(member.source) as source:
                    _write(destination, member, source, limits, name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as err:
        raise InvalidArgumentError(name, f"not a readable zip archive ({err})") from None


def _zip_members(zf: zipfile.ZipFile, name: str) -> Iterator[_Member]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise InvalidArgumentError(name, f"member {info.filename!r} is a symbolic link; links are refused")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise InvalidArgumentError(name, f"member {info.filename!r} is a device file or FIFO; refused")
        if info.flag_bits & 0x1:
            raise InvalidArgumentError(name, f"member {info.filename!r} is encrypted; refused")
        if (parts := _safe_parts(info.filename, name, is_dir=info.is_dir())):
            yield _Member(parts, info.is_dir(), 0 if info.is_dir() else info.file_size, info)


def _checked(members: Iterator[_Member], archive: Path, limits: ArchiveLimits, name: str) -> list[_Member]:
    """All members, once every cap holds for the declared sizes; raises at the first one that breaks a cap."""
    archive_bytes = max(archive.stat().st_size, 1)
    checked: list[_Member] = []
    seen: set[tuple[str, ...]] = set()
    declared_total = 0
    for member in members:
        if len(checked) + 1 > limits.max_members:
            raise InvalidArgumentError(name, f"holds more than {limits.max_members} members "
                                       "(--max-archive-members)")
        if member.parts in seen and not member.is_dir:
            raise InvalidArgumentError(name, f"member {'/'.join(member.parts)!r} appears twice")
        seen.add(member.parts)
        declared_total += member.declared_bytes
        _check_totals(declared_total, archive_bytes, limits, name)
        checked.append(member)
    return checked


def _check_totals(extracted_bytes: int, archive_bytes: int, limits: ArchiveLimits, name: str) -> None:
    if extracted_bytes > limits.max_extracted_bytes:
        raise InvalidArgumentError(name, f"extracts to more than {limits.max_extracted_bytes} bytes "
                                   "(--max-archive-extracted-bytes)")
    ratio = extracted_bytes / archive_bytes
    if extracted_bytes > limits.ratio_floor_bytes and ratio > limits.max_compression_ratio:
        raise InvalidArgumentError(name, f"extracts to {ratio:.0f}x its own size, above the "
                                   f"{limits.max_compression_ratio:g}x limit (--max-compression-ratio); "
                                   "refused as a possible zip bomb")


def _safe_parts(member_name: str, name: str, *, is_dir: bool) -> tuple[str, ...]:
    """The member's path parts; () for the archive's own root directory ('./', as `tar -C dir .` writes)."""
    if "\x00" in member_name:
        raise InvalidArgumentError(name, f"member {member_name!r} has a NUL byte in its name")
    if member_name.startswith(("/", "\\")) or _DRIVE.match(member_name):
        raise InvalidArgumentError(name, f"member {member_name!r} has an absolute path; only relative paths "
                                   "are allowed")
    parts = tuple(part for part in re.split(r"[/\\]", member_name) if part not in ("", "."))
    if ".." in parts:
        raise InvalidArgumentError(name, f"member {member_name!r} leaves the archive's directory (..)")
    if not parts and not is_dir:
        raise InvalidArgumentError(name, f"member {member_name!r} has an empty name")
    return parts


def _write(destination: Path, member: _Member, source: IO[bytes] | None, limits: ArchiveLimits,
           name: str) -> None:
    # Safe by construction: the parts hold no '..' and no absolute root, and no link was ever created under
    # `destination`, so every path below stays inside it.
    target = destination.joinpath(*member.parts)
    shown = "/".join(member.parts)
    try:
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as out:
            written = 0
            while chunk := source.read(_COPY_CHUNK_BYTES):
                written += len(chunk)
                if written > member.declared_bytes:
                    raise InvalidArgumentError(name, f"member {shown!r} holds more bytes than it declares "
                                               f"({member.declared_bytes}); refused")
                out.write(chunk)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise InvalidArgumentError(name, f"member {shown!r} collides with another member's path") from None
