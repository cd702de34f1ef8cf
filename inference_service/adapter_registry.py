"""The adapters the service serves, as every API frontend sees them (`--api-server-count` > 1), and the LoRA id
of each, derived from its artifact.

Each frontend holds its own vLLM name -> LoRARequest table, so what one frontend loads or unloads must reach the
others. The shared truth is a small JSON file in a directory of the service's own (the parent process makes it
and removes it at exit), replaced atomically (write, then rename) under a file lock; a frontend follows it with
one stat() per request. Not the engine's own list (`list_loras`): it holds integer ids only, no names or paths,
and it is an LRU cache (--max-cpu-loras) that evicts adapters the API still serves and keeps ones the API has
unloaded. Not the artifact store either: that is the trainer's, and may be mounted read-only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

REGISTRY_FILE = "adapters.json"
# Ids above the ones vLLM gives its warm-up dummies (1..max_loras) and below int32's end (a tensor dtype there).
LORA_ID_FLOOR = 1 << 20
LORA_ID_CEILING = (1 << 31) - 1
LOCK_POLL_S = 0.01
LOAD_LOCK_STRIPES = 64


@dataclass(frozen=True)
class RegisteredAdapter:
    name: str
    lora_int_id: int
    path: str


def artifact_lora_id(adapter_dir: Path, taken: Iterable[int] = ()) -> int:
    """The engine's id for an adapter directory: the same in every frontend and across restarts, a new one when
    the weights change (so the engine never serves a stale cached copy). Probes past ids `taken` by others."""
    digest = hashlib.sha256(str(adapter_dir).encode())
    for child in sorted(adapter_dir.iterdir()) if adapter_dir.is_dir() else ():
        stat = child.stat()
        digest.update(f"\0{child.name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    span = LORA_ID_CEILING - LORA_ID_FLOOR
    lora_id = LORA_ID_FLOOR + int.from_bytes(digest.digest()[:8], "big") % span
    taken = set(taken)
    while lora_id in taken:
        lora_id = LORA_ID_FLOOR + (lora_id - LORA_ID_FLOOR + 1) % span
    return lora_id


class SharedAdapterRegistry:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self._file = state_dir / REGISTRY_FILE
        self._seen: tuple[int, int, int] | None = None
        self._current: dict[str, RegisteredAdapter] = {}

    def current(self) -> dict[str, RegisteredAdapter]:
        """The registered adapters, in load order. The same dict object until the file changes (one stat)."""
        try:
            stat = self._file.stat()
        except FileNotFoundError:
            return self._current
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # a rename gives a new inode: every write shows
        if seen != self._seen:
            self._current = self._read()
            self._seen = seen
        return self._current

    def add(self, adapter: RegisteredAdapter) -> None:
        with self._locked():
            adapters = self._read()
            adapters.pop(adapter.name, None)
            adapters[adapter.name] = adapter
            self._write(adapters)

    def remove(self, name: str) -> None:
        with self._locked():
            adapters = self._read()
            if adapters.pop(name, None) is not None:
                self._write(adapters)

    @contextlib.asynccontextmanager
    async def loading(self, name: str) -> AsyncIterator[None]:
        """Held by the one frontend checking and loading `name` (the others wait, then find it loaded). Polled,
        not blocking: the waiting frontend's event loop keeps serving."""
        # A fixed set of lock files, whatever names callers send (names are checked later, under the lock).
        stripe = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % LOAD_LOCK_STRIPES
        with open(self.state_dir / f"load-{stripe}.lock", "a+b") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(LOCK_POLL_S)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """For a read-modify-write of the file, a few microseconds: short enough to take in the event loop."""
        with open(self.state_dir / "registry.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, RegisteredAdapter]:
        try:
            entries = json.loads(self._file.read_text())
        except FileNotFoundError:
            return {}
        return {entry["name"]: RegisteredAdapter(**entry) for entry in entries}

    def _write(self, adapters: dict[str, RegisteredAdapter]) -> None:
        staged = self._file.with_name(f"{REGISTRY_FILE}.{os.getpid()}.tmp")
        staged.write_text(json.dumps([asdict(adapter) for adapter in adapters.values()]))
        # File times tick coarsely and inodes are reused: each version gets a later mtime than the last, so no
        # two versions ever look alike to current().
        with contextlib.suppress(FileNotFoundError):
            last_ns = self._file.stat().st_mtime_ns
            if staged.stat().st_mtime_ns <= last_ns:
                os.utime(staged, ns=(last_ns + 1, last_ns + 1))
        os.replace(staged, self._file)
