"""Where a job's path-based datasets and base model may be on this trainer's disk.

With `--data-root`, a dataset path (absolute, or relative to the root) must resolve, symlinks followed, inside
the caller's directory: `<data-root>/<project>/` for a project's key, the whole root for an admin key and when
the trainer runs without keys. With `--models-dir`, the base model must resolve inside it (base models are
shared by every project). Without a root, an API-key trainer refuses such paths (uploaded files, the
recommended way, need no root); an open trainer (no keys: the local demo) takes any path, as before.

The check runs before anything looks at the path, and the refusal names the field and the setting only: it
never says whether something exists outside the roots. Create stores the resolved path; the background validator
and the worker read it only while it still resolves to itself (`check_still_resolved`): a symlink swapped into it
after Create would otherwise lead out of the root.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .domain import Caller
from .errors import InvalidArgumentError

T = TypeVar("T")


@dataclass(frozen=True)
class PathRoots:
    data_root: Path | None = None
    models_dir: Path | None = None
    required: bool = False  # API keys are on: a path with no root configured is refused

    def dataset(self, field_name: str, value: str, caller: Caller) -> Path | None:
        """The resolved path of a dataset named by path (None: no root configured, the path is used as it is)."""
        if self.data_root is None:
            if self.required:
                raise InvalidArgumentError(field_name, "this trainer takes datasets as uploaded file ids (Files "
                                           "API); paths need a data root (--data-root)")
            return None
        root = self.data_root
        if caller.project and not caller.is_admin:
            root = root / caller.project  # the operator's layout: this directory itself may be a symlink
        root = root.resolve()
        return _inside(root, value, field_name, "under this project's directory of the data root (--data-root)")

    def model(self, spec, caller: Caller, check: Callable[[object], T]) -> T:
        """`check(spec)` with `spec.model` confined to the models directory (resolved, symlinks followed)."""
        if self.models_dir is None:
            if self.required:
                raise InvalidArgumentError("model", "this trainer takes base models only from its models "
                                           "directory, and none is configured (--models-dir)")
            return check(spec)
        confined = _inside(self.models_dir.resolve(), spec.model, "model",
                           "a name or path under the models directory (--models-dir)")
        return check(dataclasses.replace(spec, model=str(confined)))


def _inside(root: Path, value: str, field_name: str, where: str) -> Path:
    if not value or "\x00" in value:
        raise InvalidArgumentError(field_name, f"must be {where}")
    resolved = (root / value).resolve()  # an absolute value replaces the root; `..` and symlinks are followed
    if not resolved.is_relative_to(root):
        raise InvalidArgumentError(field_name, f"must be {where}")
    return resolved


def check_still_resolved(field_name: str, path: str) -> None:
    """Refuses a path Create resolved inside a data root that no longer resolves to itself. Create resolved every
    link in it, so a link in it now was put there afterwards: where it leads is not checked, and not said."""
    if Path(path).resolve() != Path(path):
        raise InvalidArgumentError(field_name, f"{path} changed after the job was created (a symbolic link in it now "
                                   "leads elsewhere); a dataset must stay under this project's directory of the data "
                                   "root (--data-root)")
