"""The two rules every cached build here follows: a directory counts as built when its manifest carries the
recipe's fingerprint, and it appears all at once (built aside, then renamed), so a crash leaves nothing half-made."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def recipe_fingerprint(payload: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def has_fingerprint(directory: Path, manifest_name: str, fingerprint: str) -> bool:
    try:
        manifest = json.loads((Path(directory) / manifest_name).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("fingerprint") == fingerprint


@contextmanager
def built_atomically(target: Path) -> Iterator[Path]:
    """Yields an empty staging directory beside `target`; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
