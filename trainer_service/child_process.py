"""Running a module of ours as a plain child process that reads one JSON request on stdin and prints one JSON
answer: how the trainer reads whole datasets (a million rows is seconds of Python holding the GIL and most of a
gigabyte) without taking either from its gRPC servers. Not multiprocessing: nothing is pickled, and the child
does not re-import the parent's main module or start with its threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def start_json_child(module: str, request: dict) -> tuple[subprocess.Popen, str]:
    """Starts `python -m module` (with this process's import path); returns it and the request to send."""
    child = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    return child, json.dumps(request)


def json_answer(child: subprocess.Popen, out: str, err: str) -> dict:
    """The child's answer, or RuntimeError naming how it ended."""
    if child.returncode != 0 or not out.strip():
        raise RuntimeError(f"the child process ended with exit code {child.returncode}: "
                           f"{err.strip().splitlines()[-1] if err.strip() else 'no output'}")
    return json.loads(out)


def call_json_child(module: str, request: dict) -> dict:
    child, text = start_json_child(module, request)
    out, err = child.communicate(text)
    return json_answer(child, out, err)
