"""Where a training step makes the host wait for the GPU: for one step, PyTorch's sync debug mode warns at every
synchronising CUDA call (`.item()`, `.tolist()`, a device-to-host copy, `nonzero`), and each warning's Python
call site (the innermost frames outside torch) is counted. On a GPU whose step is bound by the CPU's kernel
launches, each sync drains the queue the CPU had built up, and the GPU idles while it refills.

    sites = SyncSites(); sites.start(); ...one step...; sites.stop(); print(sites.report())
"""

from __future__ import annotations

import collections
import traceback
import warnings
from pathlib import Path

FRAMES_SHOWN = 3  # a site is its innermost frames outside torch, innermost first


class SyncSites:
    def __init__(self) -> None:
        self.sites: collections.Counter[str] = collections.Counter()
        self._filters = None
        self._show = None

    def start(self) -> None:
        import torch

        self._filters, self._show = warnings.filters[:], warnings.showwarning
        warnings.simplefilter("always")  # one warning per call, not one per call site
        warnings.showwarning = self._record
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        import torch

        torch.cuda.set_sync_debug_mode("default")
        warnings.filters[:], warnings.showwarning = self._filters, self._show

    def _record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchronizing" not in str(message):
            return self._show(message, category, filename, lineno, file, line)
        frames = [frame for frame in traceback.extract_stack()[:-1]
                  if "/torch/" not in frame.filename and not frame.filename.endswith(("warnings.py", __file__))]
        self.sites[" <- ".join(f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
                               for frame in reversed(frames[-FRAMES_SHOWN:]))] += 1

    def report(self, limit: int = 15) -> str:
        lines = [f"{sum(self.sites.values())} host syncs in one step, by call site:"]
        lines += [f"{count:5d}  {site}" for site, count in self.sites.most_common(limit)]
        return "\n".join(lines)
