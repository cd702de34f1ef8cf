"""API keys and the key file.

A key is `vlmf_<key id>_<secret>`: 32 random bytes (`secrets.token_urlsafe`), so its SHA-256 is a safe way to
store it (a hash of a high-entropy random key needs no salt or slow KDF, as GitHub and Stripe tokens are kept).
The key id is not secret: it names the key in logs and the audit trail, and finds its entry in the file.

The key file is JSON (a Kubernetes Secret mounts as such a file); it holds hashes only, never a key:

    {"keys": [{"id": "3f9a2c1b7d4e", "sha256": "<64 hex digits>", "project": "team-a", "scope": "project",
               "created_at": "2026-12-01T21:00:00Z", "revoked": false, "description": "CI"}]}

`scope` is `project` (the key's own project only) or `admin` (every project). A key is revoked by setting
`"revoked": true` or removing its entry. `KeyStore` sees a changed file (modification time, size, inode: a
Secret's update swaps a symlink) within `reload_interval_s`, without a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

KEY_PREFIX = "vlmf_"
Scope = Literal["project", "admin"]
SCOPES: tuple[Scope, ...] = ("project", "admin")
PROJECT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # also a directory name under --data-root
_KEY_ID_PATTERN = re.compile(r"^[0-9a-f]{12}$")
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


class KeyFileError(ValueError):
    """The key file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class ApiKey:
    """One entry of the key file (the hash of the key, never the key)."""

    id: str
    sha256: str
    project: str
    scope: Scope = "project"
    created_at: str = ""
    revoked: bool = False
    description: str = ""

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mint_key(project: str, *, scope: Scope = "project", description: str = "") -> tuple[str, ApiKey]:
    """A new random key and the entry to store for it. The key itself is shown once and kept nowhere."""
    check_project(project)
    if scope not in SCOPES:
        raise KeyFileError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    created_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return key, ApiKey(key_id, key_digest(key), project, scope, created_at, False, description)


def key_id_of(key: str) -> str | None:
    """The id inside a presented key; None when it is not shaped like one of ours."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, _, secret = key[len(KEY_PREFIX):].partition("_")
    return key_id if _KEY_ID_PATTERN.match(key_id) and secret else None


def check_project(project: str) -> None:
    if not PROJECT_PATTERN.match(project):
        raise KeyFileError(f"project {project!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a "
                           "letter or digit")


def read_key_file(path: Path) -> dict[str, ApiKey]:
    """Key id -> entry. Raises KeyFileError naming the file and the entry."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise KeyFileError(f"{path}: not a readable JSON key file ({err})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(f'{path}: expected {{"keys": [...]}}')
    keys: dict[str, ApiKey] = {}
    for index, entry in enumerate(entries):
        key = _entry(path, index, entry)
        if key.id in keys:
            raise KeyFileError(f"{path}: keys[{index}]: key id {key.id} appears twice")
        keys[key.id] = key
    return keys


def _entry(path: Path, index: int, entry: object) -> ApiKey:
    where = f"{path}: keys[{index}]"
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: must be an object")
    unknown = set(entry) - set(ApiKey.__dataclass_fields__)
    if unknown:
        raise KeyFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        key = ApiKey(**entry)
    except TypeError:
        raise KeyFileError(f"{where}: needs id, sha256 and project") from None
    if not isinstance(key.id, str) or not _KEY_ID_PATTERN.match(key.id):
        raise KeyFileError(f"{where}: id must be 12 lowercase hex digits")
    if not isinstance(key.sha256, str) or not _SHA256_PATTERN.match(key.sha256):
        raise KeyFileError(f"{where}: sha256 must be 64 lowercase hex digits (the key's SHA-256, never the key)")
    if not isinstance(key.project, str):
        raise KeyFileError(f"{where}: project must be a string")
    try:
        check_project(key.project)
    except KeyFileError as err:
        raise KeyFileError(f"{where}: {err}") from None
    if key.scope not in SCOPES:
        raise KeyFileError(f"{where}: scope must be one of {', '.join(SCOPES)}")
    if not isinstance(key.revoked, bool):
        raise KeyFileError(f"{where}: revoked must be true or false")
    return key


def write_key_file(path: Path, keys: dict[str, ApiKey]) -> None:
    """Atomically (a temporary file renamed over it): a trainer reading it meanwhile sees the old or the new."""
    text = json.dumps({"keys": [asdict(key) for key in keys.values()]}, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class KeyStore:
    """The keys of one key file, looked up by the presented key; reloaded when the file changes."""

    def __init__(self, path: Path, *, reload_interval_s: float = 1.0):
        self.path = path
        self.reload_interval_s = reload_interval_s
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._failed_signature: tuple[int, int, int] | None = (-1, -1, -1)  # no version has failed yet
        self._keys = read_key_file(path)  # at start-up a bad file is fatal: KeyFileError
        self._checked_at = time.monotonic()

    @property
    def key_count(self) -> int:
        return sum(not key.revoked for key in self._keys.values())

    def authenticate(self, presented: str) -> ApiKey | None:
        """The entry of a valid, unrevoked key; None otherwise. The hash is compared in constant time."""
        self._reload_if_changed()
        key_id = key_id_of(presented)
        entry = self._keys.get(key_id) if key_id else None
        # Hashed and compared even for an unknown id, so the time taken does not say which ids exist.
        expected = entry.sha256 if entry is not None else "0" * 64
        matches = secrets.compare_digest(key_digest(presented), expected)
        return entry if matches and entry is not None and not entry.revoked else None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self.reload_interval_s:
            return
        with self._lock:
            if now - self._checked_at < self.reload_interval_s:
                return
            self._checked_at = now
            signature = self._stat()
            if signature in (self._signature, self._failed_signature):
                return
            try:
                keys = read_key_file(self.path)
            except KeyFileError as err:
                # A file being rewritten in place may be read half-written: keep the last good keys and look
                # again when it changes (write_key_file and Secret updates replace the file atomically). A
                # missing file also keeps them: deleting it revokes nothing. Logged once per version of the file.
                self._failed_signature = signature
                logger.error("API key file not reloaded, still using the previous keys: %s", err)
                return
            self._signature, self._keys = signature, keys
            logger.info("API key file %s reloaded: %d active keys", self.path, self.key_count)
