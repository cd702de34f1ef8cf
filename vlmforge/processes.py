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
    """Runs `python <args>` with output to `log_path` until `ready` shows in the log; returns its match."""
    process = start(args, log_path, env=env)
    return process, wait_until_ready(process, log_path, ready, timeout_s=timeout_s)


def start(args: list[str], log_path: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Starts `python <args>` with output to `log_path`, without waiting for it.
    The child gets its own process group, so a Ctrl-C in the terminal reaches only us and we stop it in order."""
    log = open(log_path, "w+b")  # noqa: SIM115 - the child holds it
    process = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    log.close()
    return process


def wait_until_ready(process: subprocess.Popen, log_path: Path, ready: re.Pattern[bytes], *,
                     timeout_s: float = 240) -> re.Match[bytes]:
    """Waits until `ready` shows in the log of a process `start` started; stops it if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = ready.search(log_path.read_bytes())
        if match:
            return match
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[1:]} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)
    stop(process)
    raise TimeoutError(f"{process.args[1:]} did not become ready in {timeout_s} s:\n{log_path.read_text()[-4000:]}")


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
