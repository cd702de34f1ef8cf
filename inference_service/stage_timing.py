"""Where one chat request's time goes before its first byte leaves: each stage of our layer (body read, JSON parse,
checks, alias / adapter resolution, image decode and check, re-encode) and vLLM's part after the hand-off. Sent
as a W3C `Server-Timing` header (`name;dur=ms`) on the chat response, and observed into
`vlmforge_inference_stage_seconds{stage=...}`.

The response's start is held until its first body chunk, so the header can say what preceded that byte: for a
stream vLLM starts the response once the request is rendered (chat template, images, processor: `vllm_render`)
and sends the first chunk with the first token (`vllm_engine`: queue, schedule, prefill); a whole response
starts only once every token is generated (`vllm`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Histogram
from starlette.types import Message, Send

HEADER = b"server-timing"
TOTAL = "total"  # arrival to the first byte out, as browsers' devtools show W3C's `total`


class StageTimes:
    """Stage durations of one request, in the order they first ran; a stage that runs twice (two images) adds up."""

    def __init__(self, started_s: float | None = None):
        self.started_s = time.perf_counter() if started_s is None else started_s
        self.durations_s: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        self.durations_s[name] = self.durations_s.get(name, 0.0) + seconds

    def header_value(self) -> str:
        return ", ".join(f"{name};dur={1000 * seconds:.3f}" for name, seconds in self.durations_s.items())


@contextmanager
def stage(times: StageTimes | None, name: str) -> Iterator[None]:
    """`times.stage(name)`, or nothing where no one times this call (unit tests, the bench's in-process cost)."""
    if times is None:
        yield
    else:
        with times.stage(name):
            yield


class ServerTimingSend:
    """Wraps `send` from the hand-off to vLLM on: holds `http.response.start` until the first body message, then
    sends it with the Server-Timing header, and observes every stage (and `total`) into `histogram`."""

    def __init__(self, send: Send, times: StageTimes, histogram: Histogram | None, *, stream: bool):
        self._send = send
        self._times = times
        self._histogram = histogram
        self._stream = stream
        self._handed_off_s = time.perf_counter()
        self._start: Message | None = None
        self._started_s = 0.0
        self._headers_sent = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and not self._headers_sent:
            self._start, self._started_s = message, time.perf_counter()
            return
        if message["type"] == "http.response.body" and not self._headers_sent:
            await self._send_start()
        await self._send(message)

    async def flush(self) -> None:
        """A start vLLM sent without any body (it never does; a disconnect mid-way might) still goes out."""
        if self._start is not None and not self._headers_sent:
            await self._send_start()

    async def _send_start(self) -> None:
        now = time.perf_counter()
        if self._stream:
            self._times.add("vllm_render", self._started_s - self._handed_off_s)
            self._times.add("vllm_engine", now - self._started_s)
        else:
            self._times.add("vllm", now - self._handed_off_s)
        self._times.add(TOTAL, now - self._times.started_s)
        start = self._start or {"type": "http.response.start", "status": 500, "headers": []}
        self._headers_sent = True
        await self._send({**start, "headers": [*start.get("headers", []),
                                               (HEADER, self._times.header_value().encode("latin-1"))]})
        if self._histogram is not None:
            for name, seconds in self._times.durations_s.items():
                self._histogram.labels(name).observe(seconds)


def parse_server_timing(value: str) -> dict[str, float]:
    """name -> dur (ms) of a Server-Timing header value; metrics without `dur` read 0 (as the spec says)."""
    durations: dict[str, float] = {}
    for metric in filter(None, (part.strip() for part in value.split(","))):
        name, *params = (piece.strip() for piece in metric.split(";"))
        duration = 0.0
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip().lower() == "dur":
                duration = float(raw.strip().strip('"'))
        durations[name] = duration
    return durations
