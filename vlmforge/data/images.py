"""Turning what a dataset says about an image into an ImageRef, safely.

Paths must stay inside the dataset's directory after symlinks are resolved, and nothing is ever fetched
from the network: a dataset that points at a URL is refused, not downloaded.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from .errors import DatasetFormatError
from .types import ImageRef

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<payload>.*)$", re.S)
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def image_from_path(raw: object, dataset_dir: Path, *, file: Path, line: int, field: str) -> ImageRef:
    """A path relative to the dataset file's directory, which must exist and not escape that directory."""
    if not isinstance(raw, str) or not raw:
        raise DatasetFormatError(file, "expected a non-empty image path string", line=line, field=field)
    if raw.startswith("data:"):
        return image_from_data_url(raw, file=file, line=line, field=field)
    if _URL_SCHEME.match(raw):
        raise DatasetFormatError(
            file, "image URLs are not fetched; give a path inside the dataset directory or embedded bytes",
            line=line, field=field,
        )
    candidate = Path(raw)
    if candidate.is_absolute():
        raise DatasetFormatError(file, "absolute image paths are refused; use a path relative to the dataset file",
                                 line=line, field=field)
    root = dataset_dir.resolve()
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise DatasetFormatError(file, f"image path {raw!r} leaves the dataset directory", line=line, field=field)
    if not resolved.is_file():
        raise DatasetFormatError(file, f"image file {raw!r} does not exist", line=line, field=field)
    return ImageRef(path=resolved)


def image_from_data_url(url: str, *, file: Path, line: int, field: str) -> ImageRef:
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise DatasetFormatError(file, "expected a base64 data: URL (data:image/png;base64,...)", line=line, field=field)
    mime = (match.group("mime") or "").lower()
    if not mime.startswith("image/"):
        raise DatasetFormatError(file, f"data: URL has media type {mime or 'none'!r}, expected image/*",
                                 line=line, field=field)
    try:
        data = base64.b64decode(match.group("payload"), validate=True)
    except (binascii.Error, ValueError):
        raise DatasetFormatError(file, "data: URL payload is not valid base64", line=line, field=field) from None
    if not data:
        raise DatasetFormatError(file, "data: URL holds no bytes", line=line, field=field)
    return ImageRef(data=data)


def image_from_bytes(data: object, *, file: Path, line: int, field: str) -> ImageRef:
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise DatasetFormatError(file, "expected non-empty image bytes", line=line, field=field)
    return ImageRef(data=bytes(data))
