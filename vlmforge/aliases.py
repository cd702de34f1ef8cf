"""Model aliases: a stable model name (`chartqa`) that the inference service resolves to one fine-tuned adapter or
to the base model. Kept, with every change ever made, in the artifact store both services share:

    <artifacts_dir>/.aliases/<alias>/<version>.json     one file per change: 0000000001.json, 0000000002.json, ...

A version file is written once and never changed; the alias's target is its highest version. A change is
written to a temporary file and then hard-linked to the next version's name, which fails if that name exists:
of two writers (the trainer's quality gate, the admin API of any inference frontend) only one becomes version N,
the other reads the new state and decides again. No locks, so no lock to leave behind, and readers always see
whole files. `.aliases` starts with a dot, which no model name may, so it can never shadow an artifact entry.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ALIASES_DIR = ".aliases"
# A subset of the model names vlmforge.artifacts accepts: lowercase, as OpenAI model names are.
ALIAS_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ALIAS_NAME_RULE = "1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
ACTIONS = ("set", "promote", "rollback")
_VERSION_FILE = re.compile(r"(\d{10})\.json")
MAX_WRITE_ATTEMPTS = 100  # each retry follows another writer's success, so this bounds only a stampede


class AliasError(Exception):
    """A change that cannot be made (no such alias, nothing to roll back to); the message says why."""


class AliasNotFound(AliasError):
    pass


class AliasConflict(AliasError):
    """Another writer kept winning the race for the next version."""


def is_valid_alias_name(name: str) -> bool:
    return ALIAS_NAME_PATTERN.fullmatch(name) is not None and ".." not in name


@dataclass(frozen=True)
class AliasVersion:
    """One change of an alias. `target` is an adapter's fine_tuned_model name; None is the base model."""

    alias: str
    version: int
    target: str | None
    action: str  # ACTIONS
    actor: str  # "admin", or "job:<id>" for the trainer's promotion
    created_at: float
    reason: str = ""
    restores: int | None = None  # rollback: the version whose target it restores
    scores: dict[str, Any] = field(default_factory=dict)  # promote: metric, candidate, current, test_set_sha256

    @property
    def position(self) -> int:
        """Where in the history this state comes from: a rollback stands where the version it restores stood."""
        return self.restores if self.restores is not None else self.version

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AliasChange:
    """What a writer wants the next version to be."""

    target: str | None
    action: str
    actor: str
    reason: str = ""
    restores: int | None = None
    scores: dict[str, Any] = field(default_factory=dict)


def rollback_change(history: list[AliasVersion], actor: str, *, to_version: int | None = None,
                    reason: str = "") -> AliasChange:
    """Back to the target before the current one (before the change the current state came from, so repeated
    rollbacks walk further back), or to `to_version`'s target."""
    if not history:
        raise AliasNotFound("the alias does not exist")
    by_version = {entry.version: entry for entry in history}
    if to_version is None:
        previous = history[-1].position - 1
        if previous < 1:
            raise AliasError(f"version {history[-1].version} is the alias's first state: nothing to roll back to")
        restored = by_version[previous]
    elif to_version not in by_version:
        raise AliasError(f"the alias has no version {to_version} (it has 1-{history[-1].version})")
    else:
        restored = by_version[to_version]
    return AliasChange(restored.target, "rollback", actor, reason or f"rolled back to version {restored.position}",
                       restores=restored.position)


class AliasStore:
    """The alias files of one artifact store. Every call reads the files: caching (and when to re-read) is the
    caller's choice, made where the cost matters (inference_service/aliases.py)."""

    def __init__(self, artifacts_dir: Path):
        self.artifacts_dir = Path(artifacts_dir)
        self.root = self.artifacts_dir / ALIASES_DIR

    def alias_dir(self, alias: str) -> Path:
        if not is_valid_alias_name(alias):
            raise AliasError(f"alias names are {ALIAS_NAME_RULE}")
        return self.root / alias

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.root.iterdir() if is_valid_alias_name(p.name) and p.is_dir())
        except FileNotFoundError:
            return []

    def history(self, alias: str) -> list[AliasVersion]:
        directory = self.alias_dir(alias)
        try:
            numbers = sorted(int(m.group(1)) for p in directory.iterdir() if (m := _VERSION_FILE.fullmatch(p.name)))
        except FileNotFoundError:
            return []
        return [self._read(directory, alias, number) for number in numbers]

    def current(self, alias: str) -> AliasVersion | None:
        directory = self.alias_dir(alias)
        try:
            with os.scandir(directory) as entries:
                numbers = [int(m.group(1)) for p in entries if (m := _VERSION_FILE.fullmatch(p.name))]
        except FileNotFoundError:
            return None
        return self._read(directory, alias, max(numbers)) if numbers else None

    def change(self, alias: str, decide: Callable[[list[AliasVersion]], AliasChange | None]) -> AliasVersion | None:
        """Writes the version `decide(history)` asks for; None: it asked for nothing. When another writer takes
        the next version first, `decide` runs again on the new history (a gate re-checks the new target)."""
        directory = self.alias_dir(alias)
        for attempt in range(MAX_WRITE_ATTEMPTS):
            history = self.history(alias)
            wanted = decide(history)
            if wanted is None:
                return None
            if wanted.action not in ACTIONS:
                raise ValueError(f"unknown alias action {wanted.action!r}")
            entry = AliasVersion(alias, (history[-1].version if history else 0) + 1, wanted.target, wanted.action,
                                 wanted.actor, time.time(), wanted.reason, wanted.restores, dict(wanted.scores))
            if self._write_once(directory, entry):
                return entry
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # spread racing writers out, or one may starve
        raise AliasConflict(f"alias {alias!r} kept changing under {MAX_WRITE_ATTEMPTS} attempts to change it")

    def set(self, alias: str, target: str | None, actor: str, reason: str = "") -> AliasVersion:
        written = self.change(alias, lambda _: AliasChange(target, "set", actor, reason))
        assert written is not None
        return written

    def rollback(self, alias: str, actor: str, *, to_version: int | None = None, reason: str = "") -> AliasVersion:
        written = self.change(alias, lambda history: rollback_change(history, actor, to_version=to_version,
                                                                     reason=reason))
        assert written is not None
        return written

    def _write_once(self, directory: Path, entry: AliasVersion) -> bool:
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / f".tmp-{secrets.token_hex(8)}"
        with open(temporary, "w") as file:
            file.write(json.dumps(entry.to_json(), indent=1) + "\n")
            file.flush()
            os.fsync(file.fileno())  # whole on disk before any reader can see the name
        try:
            os.link(temporary, directory / f"{entry.version:010d}.json")  # fails if the version exists
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    @staticmethod
    def _read(directory: Path, alias: str, number: int) -> AliasVersion:
        data = json.loads((directory / f"{number:010d}.json").read_text())
        return AliasVersion(alias, number, data.get("target"), data.get("action", "set"), data.get("actor", ""),
                            float(data.get("created_at", 0)), data.get("reason", ""), data.get("restores"),
                            data.get("scores") or {})
