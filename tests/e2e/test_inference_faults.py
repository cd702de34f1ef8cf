"""Faults against the real inference service (vLLM CPU, the tiny model), a fresh server for each test since
each one ends it (the next one starting while a test runs): SIGTERM under load, the engine process dying, a
client leaving in the middle of a stream."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vlmforge.processes import start, stop, wait_until_ready

from .test_inference_service import READY

pytestmark = pytest.mark.slow


class _ServicePool:
    """Services started ahead of the tests that end them: while one test runs, the next test's service is
    already starting (an engine start is mostly single-threaded, so on CI's two cores it overlaps almost for
    free). At most one is started ahead, and no more are started than the module's tests take."""

    def __init__(self, tiny_model_dir: Path, root: Path, needed: int):
        self.tiny_model_dir, self.root, self.needed = tiny_model_dir, root, needed
        self.started: list[tuple[subprocess.Popen, Path]] = []
        self.taken = 0

    def take(self) -> tuple[subprocess.Popen, Path]:
        while len(self.started) < min(self.taken + 2, self.needed):
            self.started.append(self._start(len(self.started)))
        self.taken += 1
        return self.started[self.taken - 1]

    def _start(self, number: int) -> tuple[subprocess.Popen, Path]:
        directory = self.root / f"service-{number}"
        (directory / "artifacts").mkdir(parents=True)
        log = directory / "inference.log"
        return start(["-m", "inference_service", "--base-model", str(self.tiny_model_dir),
                      "--served-model-name", "tiny", "--artifacts-dir", str(directory / "artifacts"),
                      "--port", "0", "--drain-timeout-s", "60", "--vllm-args", "--max-num-seqs 8"], log), log

    def close(self) -> None:
        for process, _ in self.started:
            stop(process)


@pytest.fixture(scope="module")
def service_pool(request, tiny_model_dir: Path, tmp_path_factory):
    needed = sum(1 for item in request.session.items
                 if item.module is request.module and "service" in item.fixturenames)
    pool = _ServicePool(tiny_model_dir, tmp_path_factory.mktemp("inference-faults"), needed)
    yield pool
    pool.close()


@pytest.fixture()
def service(service_pool: _ServicePool):
    process, log = service_pool.take()
    ready = wait_until_ready(process, log, READY)
    yield process, f"http://127.0.0.1:{int(ready.group(1))}", log
    stop(process)


@pytest.fixture(scope="module")
def image_url(small_dataset_dir: Path) -> str:
    png = sorted((small_dataset_dir / "images" / "test").glob("*.png"))[0].read_bytes()
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _body(image_url: str, max_tokens: int) -> dict:
    return {"model": "tiny", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
            "min_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": "Describe it."}]}]}


def _engine_gauge(base: str, name: str, **labels: str) -> float:
    """The sum of a vLLM metric's samples (counters: their _total) whose labels match."""
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) if family.name == name
               for sample in family.samples
               if not sample.name.endswith("_created") and labels.items() <= sample.labels.items())


class _Stream(threading.Thread):
    """One streamed chat completion read line by line: its SSE data lines, and when the first one came."""

    def __init__(self, base: str, body: dict):
        super().__init__(daemon=True)
        self.base, self.body = base, body
        self.data: list[str] = []
        self.first = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.base + "/v1/chat/completions", json=self.body, timeout=120) as reply:
                for line in reply.iter_lines():
                    if line.startswith("data: "):
                        self.data.append(line.removeprefix("data: "))
                        self.first.set()
        except httpx.HTTPError as error:
            self.error = error
        self.first.set()

    def tokens(self) -> int:
        """Completion tokens, from the usage chunk that ends a finished stream (0 if it never came)."""
        usage = [json.loads(d).get("usage") for d in self.data if d != "[DONE]"]
        return next((u["completion_tokens"] for u in reversed(usage) if u), 0)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_client_leaving_mid_stream_leaves_nothing_running(service, image_url) -> None:
    """The tiny model on this CPU generates 4,000 tokens in well under a second, far faster than they are
    streamed out: whether the engine still had tokens to abort when the disconnect arrived is down to timing.
    What must always hold: nothing is left running or streaming, and the next client is served."""
    _, base, _ = service
    with httpx.stream("POST", base + "/v1/chat/completions", json=_body(image_url, 4000), timeout=120) as reply:
        lines = reply.iter_lines()
        while not next(lines).startswith("data: "):
            pass
    _wait(lambda: _engine_gauge(base, "vllm:num_requests_running") == 0, 15, "no request left running")
    follow_up = _Stream(base, _body(image_url, 4))
    follow_up.run()
    assert follow_up.error is None and follow_up.tokens() == 4 and follow_up.data[-1] == "[DONE]"


def test_sigterm_under_load_stops_taking_work_finishes_streams_and_exits_0(service, image_url) -> None:
    process, base, log = service
    family = psutil.Process(process.pid).children(recursive=True)
    assert family, "vLLM runs its engine in a child process"
    streams = [_Stream(base, _body(image_url, 48)) for _ in range(4)]
    for stream in streams:
        stream.start()
    for stream in streams:
        assert stream.first.wait(60)
    process.send_signal(signal.SIGTERM)

    def health_refused() -> bool:
        try:
            return httpx.get(base + "/health", timeout=2).status_code != 200
        except httpx.HTTPError:
            return True

    _wait(health_refused, 30, "/health to stop answering 200 once draining")
    process.wait(90)
    for stream in streams:
        stream.join(30)
        assert stream.error is None and stream.tokens() == 48 and stream.data[-1] == "[DONE]", stream.data[-3:]
    assert process.returncode == 0, log.read_text()[-3000:]
    # Children see their parent gone through a closed pipe, a moment later on a loaded machine: give them that.
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not [p for p in alive if _running(p)], "orphans left"


def test_engine_death_ends_streams_with_an_error_then_503_and_exit(service, image_url) -> None:
    process, base, log = service
    engine = [p for p in psutil.Process(process.pid).children(recursive=True) if "EngineCore" in p.name()
              or "EngineCore" in " ".join(p.cmdline())]
    assert engine, [(p.name(), p.cmdline()) for p in psutil.Process(process.pid).children(recursive=True)]
    stream = _Stream(base, _body(image_url, 4000))
    stream.start()
    assert stream.first.wait(60)
    for child in engine:
        child.kill()
    stream.join(60)
    assert stream.data[-1] == "[DONE]", stream.data[-3:]
    error_chunk = json.loads(stream.data[-2])
    assert "error" in error_chunk, error_chunk

    def health_503_or_gone() -> bool:
        try:
            return httpx.get(base + "/health", timeout=2).status_code == 503
        except httpx.HTTPError:
            return process.poll() is not None
    _wait(health_503_or_gone, 30, "/health to answer 503")
    process.wait(60)  # the orchestrator restarts it: it must not linger half-alive
    assert process.returncode is not None, log.read_text()[-3000:]
