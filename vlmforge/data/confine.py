"""Files of a dataset stay inside its directory after symlinks: a dataset may hold links, but none that lead
out (with the trainer's `--data-root`, out would be another project's data)."""

from __future__ import annotations

import os
from pathlib import Path


def resolved_inside(root: Path, path: Path) -> Path | None:
    """`path` with every symlink resolved, or None when that leaves `root` (itself resolved)."""
    real_root = os.path.realpath(root)
    target = os.path.realpath(path)
    if target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep):
        return Path(target)
    return None
