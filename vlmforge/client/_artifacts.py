"""Receiving a job's artifact tar stream: spooled to disk beside `dest`, its sha256 checked, then unpacked."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from . import types
from .errors import DataLossError


def receive_artifacts(chunks: Iterable, dest: Path, *, merged: bool,
                      progress: Callable[[int], None] | None) -> types.DownloadedArtifacts:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest}: already exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, received, announced = hashlib.sha256(), 0, None
    # Next to dest: the same filesystem, so the final rename is atomic and no /tmp quota applies.
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.download-") as staging:
        archive = Path(staging) / "artifacts.tar"
        with open(archive, "wb") as file:
            for chunk in chunks:
                if chunk.WhichOneof("payload") == "digest":
                    announced = chunk.digest
                    break
                file.write(chunk.data)
                digest.update(chunk.data)
                received += len(chunk.data)
                if progress is not None:
                    progress(received)
        if announced is None:
            raise DataLossError("the artifact stream ended before its sha256 digest")
        if announced.sha256 != digest.hexdigest() or announced.bytes != received:
            raise DataLossError(f"artifact stream: received {received} bytes with sha256 {digest.hexdigest()}, "
                                f"the trainer sent {announced.bytes} bytes with sha256 {announced.sha256}")
        unpacked = Path(staging) / "unpacked"
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")  # no absolute paths, no '..', no device files
        if dest.exists():
            dest.rmdir()  # empty, checked above
        shutil.move(str(unpacked), dest)
    return types.DownloadedArtifacts(path=str(dest), sha256=announced.sha256, bytes=received,
                                     adapter_path=str(dest / "adapter"),
                                     merged_model_path=str(dest / "merged_model") if merged else "")
