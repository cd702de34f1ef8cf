"""Starting the services as subprocesses (the demo, end-to-end tests) and stopping them without leftovers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_and_wait(args: list[str], log_path: Path, ready: re.Pattern[bytes], *, timeout_s: float = 240,
                   env: dict[str, str] | None = None) -> tuple[subprocess.Popen, re.Match[bytes]]:
    """Runs `python <args>` with output to `log_path` until `ready` shows in the log; returns its match.
    The child gets its own process group, so a Ctrl-C in the terminal reaches only us and we stop it in order."""
    log = open(log_path, "w+b")  # noqa: SIM115 - the child holds it
    process = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = ready.search(log_path.read_bytes())
        if match:
            return process, match
        if process.poll() is not None:
            raise RuntimeError(f"{args} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)
    stop(process)
    raise TimeoutError(f"{args} did not become ready in {timeout_s} s:\n{log_path.read_text()[-4000:]}")


def stop(process: subprocess.Popen, grace_s: float = 30) -> int:
    """SIGTERM (the services drain and exit 0), then after `grace_s` SIGKILL; either way nothing of the
    process group (vLLM's engine, a training worker) is left running. Returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of its group, if any
    except (ProcessLookupError, PermissionError):
        pass
    return process.returncode
