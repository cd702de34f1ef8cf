"""Turning what a dataset says about an image into an ImageRef, safely and cheaply.

Paths must stay inside the dataset's directory after symlinks are resolved, and nothing is ever fetched
from the network: a dataset that points at a URL is refused, not downloaded. Images are never decoded here:
an ImageRef keeps a path or the encoded bytes, so a million-row dataset costs no pixel memory.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
from pathlib import Path

from .errors import DatasetFormatError
from .types import ImageRef

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<payload>.*)$", re.S)
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_PARENT = os.pardir + os.sep


class ImageResolver:
    """Checks image paths against one dataset directory. The root and each directory are resolved once and each
    distinct path is stat'ed once, so a million rows cost a dictionary lookup each, not a realpath each."""

    def __init__(self, dataset_dir: Path):
        self.dataset_dir = dataset_dir
        self._root = os.path.realpath(dataset_dir)
        self._root_prefix = self._root.rstrip(os.sep) + os.sep
        self._dirs: dict[str, str | None] = {}  # relative directory -> resolved directory (None: it leaves the root)
        self._images: dict[str, ImageRef | str] = {}  # raw path -> ImageRef, or the reason it is refused

    def from_path(self, raw: object, *, file: Path, line: int, field: str) -> ImageRef:
        """A path relative to the dataset directory (or a `data:` URL), which must exist and stay inside it."""
        outcome = self.resolve(raw)
        if type(outcome) is str:
            raise DatasetFormatError(file, outcome, line=line, field=field)
        return outcome  # type: ignore[return-value]

    def resolve(self, raw: object) -> ImageRef | str:
        """The ImageRef, or why the path is refused: hot loops build their error's field name only on error."""
        if type(raw) is str:
            known = self._images.get(raw)
            if known is not None:
                return known
            if raw.startswith("data:"):
                try:
                    return image_from_data_url(raw, file=self.dataset_dir, line=0, field="")
                except DatasetFormatError as err:
                    return err.reason
            if raw:
                outcome = self._images[raw] = self._check(raw)
                return outcome
        return "expected a non-empty image path string"

    def _check(self, raw: str) -> ImageRef | str:
        if "://" in raw and _URL_SCHEME.match(raw):
            return "image URLs are not fetched; give a path inside the dataset directory or embedded bytes"
        if raw[0] == os.sep:
            return "absolute image paths are refused; use a path relative to the dataset file"
        # Already normal paths (the common case) skip normpath, which is pure Python and a third of the cost.
        relative = os.path.normpath(raw) if "/." in "/" + raw or "//" in raw or raw[-1] == os.sep else raw
        if relative == os.pardir or relative.startswith(_PARENT):
            return f"image path {raw!r} leaves the dataset directory"
        directory, _, name = relative.rpartition(os.sep)
        resolved_dir = self._resolved_dir(directory)
        if resolved_dir is None:
            return f"image path {raw!r} leaves the dataset directory"
        candidate = resolved_dir + os.sep + name
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            return f"image file {raw!r} does not exist"
        if stat.S_ISLNK(mode):  # rare: only then is the file itself resolved
            candidate = os.path.realpath(candidate)
            if not self._inside(candidate):
                return f"image path {raw!r} leaves the dataset directory"
            if not os.path.isfile(candidate):
                return f"image file {raw!r} does not exist"
        elif not stat.S_ISREG(mode):
            return f"image path {raw!r} is not a file"
        return ImageRef(path=candidate)

    def _resolved_dir(self, directory: str) -> str | None:
        if directory not in self._dirs:
            resolved = os.path.realpath(os.path.join(self._root, directory)) if directory else self._root
            self._dirs[directory] = resolved if resolved == self._root or self._inside(resolved) else None
        return self._dirs[directory]

    def _inside(self, resolved: str) -> bool:
        return resolved.startswith(self._root_prefix)


def image_from_path(raw: object, dataset_dir: Path, *, file: Path, line: int, field: str) -> ImageRef:
    """One path checked on its own (callers with many rows keep an ImageResolver instead)."""
    return ImageResolver(dataset_dir).from_path(raw, file=file, line=line, field=field)


def image_from_value(value: object, images: ImageResolver, *, file: Path, line: int, field: str,
                     index: int | None = None) -> ImageRef:
    """Any cell a dataset may hold for an image: a path or `data:` URL, encoded bytes, a `datasets` Image value
    (`{"bytes", "path"}`), or an already decoded PIL image (re-encoded once as PNG). The error's field is
    `field[index]` when an index is given (built only on error)."""
    if type(value) is str:
        outcome = images.resolve(value)
        if type(outcome) is not str:
            return outcome  # type: ignore[return-value]
    if index is not None:
        field = f"{field}[{index}]"
    if isinstance(value, dict):
        if value.get("bytes"):
            return image_from_bytes(value["bytes"], file=file, line=line, field=field)
        if "path" not in value:
            raise DatasetFormatError(file, "expected an image value with 'bytes' or 'path'", line=line, field=field)
        value = value["path"]
    if isinstance(value, (bytes, bytearray)):
        return image_from_bytes(value, file=file, line=line, field=field)
    if hasattr(value, "save"):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")  # type: ignore[union-attr]
        return image_from_bytes(buffer.getvalue(), file=file, line=line, field=field)
    return images.from_path(value, file=file, line=line, field=field)


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
