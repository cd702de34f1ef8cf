"""Where vLLM's engine core spends a benchmark level: py-spy samples its threads (idle ones included, so the main
thread's samples add up to its wall time), and `summarize` sorts the main thread's samples into the stages of an
engine step. Blocking waits (on the GPU, on a socket) show as the frame that waits, so a stage's share is of wall
time, not of CPU time. py-spy is a bench-only tool (`pip install py-spy==0.4.3`), used only when asked for.

    with EngineCoreProfile(server_pid, Path("ours-1-engine-core.txt")):
        ...  # the measured level
    summarize(Path("ours-1-engine-core.txt"))  # {"main_thread_samples": ..., "stages": {...}, "top_leaves": [...]}

    python bench/engine_profile.py PROFILE.txt   # the summary of a raw profile, as a table
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil

from process_cpu import role_of  # noqa: E402 - bench/ is on sys.path when run as a script

SAMPLES_PER_S = 200
# (stage, pattern over the sample's stack, frames joined by ";" from the thread's root to the function on top): a
# main-thread sample goes to the first stage that matches, so the narrower stages come first (the multimodal
# batching runs inside the encoder step, which runs inside the model runner's).
STAGES = tuple((stage, re.compile(pattern)) for stage, pattern in (
    ("multimodal inputs batched into pinned memory", r"group_and_batch_mm_kwargs|_reduce_data"),
    ("vision encoder forward", r"embed_multimodal"),
    ("LoRA mapping of the batch", r"set_active_adapters|set_active_mm_loras"),
    ("language model forward", r"_support_torch_compile|CUDAGraphWrapper"),
    ("sampling and copying tokens back", r"sample_tokens"),
    ("handing the step to the worker process, waiting for it", r"MultiprocExecutor"),
    ("scheduler", r"Scheduler\."),
    ("model runner, other (inputs, bookkeeping)", r"execute_model"),
    ("waiting for new requests", r"_process_input_queue \([^)]*\);Queue\.get|Poller\.poll"),
    ("taking in requests, sending outputs", r"_process_input_queue|process_input_sockets|process_output_sockets"
                                            r"|Msgpack(De|En)coder"),
))
MAIN_THREAD_FRAME = "run_busy_loop"  # vLLM's EngineCoreProc busy loop: the thread that runs every engine step


def engine_core_pid(root_pid: int) -> int | None:
    """The engine core in a server's process tree, by vLLM's process title."""
    return next((process.pid for process in psutil.Process(root_pid).children(recursive=True)
                 if role_of(process, root_pid, root_is_frontend=False) == "engine core"), None)


class EngineCoreProfile:
    """py-spy on the engine core from entering to leaving (stopped with SIGINT, on which it writes its file).
    `native`: C/C++ frames too (inside torch's and CUDA's calls); py-spy then pauses the process for each sample,
    so the profiled level runs slower than it would."""

    def __init__(self, root_pid: int, out: Path, *, native: bool = False, py_spy: str = "py-spy",
                 longest_s: int = 600):
        self.root_pid, self.out, self.native, self.longest_s = root_pid, out, native, longest_s
        self.py_spy = shutil.which(py_spy)
        if self.py_spy is None:
            raise RuntimeError(f"{py_spy!r} not found: `pip install py-spy==0.4.3` to profile the engine core")

    def __enter__(self) -> EngineCoreProfile:
        pid = engine_core_pid(self.root_pid)
        if pid is None:
            raise RuntimeError(f"no vLLM engine core under process {self.root_pid}")
        self._record = subprocess.Popen(
            [self.py_spy, "record", "--pid", str(pid), "--duration", str(self.longest_s), "--rate",
             str(SAMPLES_PER_S), "--format", "raw", "--idle", "--output", str(self.out),
             *(["--native"] if self.native else ["--nonblocking"])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Until py-spy samples (it says so), a SIGINT would kill it before it writes anything: native frames
        # take it seconds to attach.
        while b"Sampling process" not in (line := self._record.stdout.readline()):
            if not line:
                raise RuntimeError(f"py-spy could not attach to {pid} ({self._record.wait()})")
        return self

    def __exit__(self, *exc) -> None:
        self._record.send_signal(signal.SIGINT)
        output, _ = self._record.communicate(timeout=60)
        if not self.out.exists():
            raise RuntimeError(f"py-spy failed ({self._record.returncode}): {output.decode()[-2000:]}")


def summarize(raw_profile: Path) -> dict:
    """The main thread's samples by stage (shares of its wall time), and the functions most often on top."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    main_samples = other_samples = 0
    for line in raw_profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if MAIN_THREAD_FRAME not in stack:
            other_samples += count
            continue
        main_samples += count
        stages[_stage(stack)] += count
        leaves[stack.rpartition(";")[2]] += count
    return {"main_thread_samples": main_samples, "other_thread_samples": other_samples,
            "stages": {stage: count / main_samples for stage, count in stages.most_common()} if main_samples else {},
            "top_leaves": [(leaf, count / main_samples) for leaf, count in leaves.most_common(8)]}


def _stage(stack: str) -> str:
    return next((stage for stage, pattern in STAGES if pattern.search(stack)), "other")


def print_summary(name: str, summary: dict) -> None:
    print(f"\nengine core main thread, {name}: {summary['main_thread_samples']} samples "
          f"({summary['main_thread_samples'] / SAMPLES_PER_S:.1f} s; the other threads "
          f"{summary['other_thread_samples']}), share of its wall time by stage:\n")
    print("| stage | share of the main thread |\n|---|---|")
    for stage, share in summary["stages"].items():
        print(f"| {stage} | {100 * share:.1f}% |")
    print("\nfunctions most often on top of its stack: " + "; ".join(
        f"{leaf} {100 * share:.1f}%" for leaf, share in summary["top_leaves"]))


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print_summary(Path(path).name, summarize(Path(path)))
