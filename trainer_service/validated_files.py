"""Dataset files that Create has read in full recently, so a sweep of jobs over one file reads it once.

A file is known by its path and what `stat` says of it (inode, size, modification time), together with how the
job reads it (format, columns, entry, split). Any change to the file makes a new key; entries expire after
`ttl_s` so images replaced beside an unchanged file are looked at again before long. Only successes are kept:
a bad file is read, and refused, every time.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable, Hashable


class RecentlyValidated:
    def __init__(self, *, max_entries: int = 256, ttl_s: float = 300.0):
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._validated_at: collections.OrderedDict[Hashable, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def validate_once(self, path: str, how: Hashable, validate: Callable[[], object]) -> None:
        """Runs `validate()` (which raises on a bad file) unless this file, read this way, passed recently."""
        try:
            stat = os.stat(path)
        except OSError:
            validate()  # missing or unreadable: let the loader say so in its own words
            return
        key = (os.path.abspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, how)
        now = time.monotonic()
        with self._lock:
            validated_at = self._validated_at.get(key)
            if validated_at is not None and now - validated_at < self.ttl_s:
                self._validated_at.move_to_end(key)
                return
        validate()
        with self._lock:
            self._validated_at[key] = now
            self._validated_at.move_to_end(key)
            while len(self._validated_at) > self.max_entries:
                self._validated_at.popitem(last=False)
