"""The event loop the trainer's async gRPC servers run on, in a thread of its own, so that synchronous callers
(the service's main, the launchers, tests) start, drive and stop them with plain calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

T = TypeVar("T")


class ServerLoop:
    """One loop for every server of the process: grpc.aio ties its completion queue to the loop it first ran
    on, so one loop is the shape it is built and tested for."""

    _shared: ServerLoop | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-aio-loop", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls) -> ServerLoop:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def run(self, coroutine: Awaitable[T], timeout_s: float | None = None) -> T:
        """Runs `coroutine` on the loop and waits for its result. Never call it from the loop's own thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Thread-safe: schedules a plain callback on the loop (wake-ups from other threads)."""
        self.loop.call_soon_threadsafe(callback)


class _Stopped:
    """What `AsyncServer.stop` returns, shaped like grpc.Server.stop's threading.Event: `.wait()` blocks until
    the server has stopped."""

    def __init__(self, done: threading.Event):
        self._done = done

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)


class AsyncServer:
    """A started grpc.aio server seen from synchronous code: `stop(grace_s)` behaves as grpc.Server's."""

    def __init__(self, loop: ServerLoop, server: grpc.aio.Server, on_stopped: Callable[[], None] = lambda: None):
        self._loop = loop
        self.aio_server = server
        self._on_stopped = on_stopped
        self._stopped = threading.Event()

    def stop(self, grace_s: float | None) -> _Stopped:
        """Stops taking calls now; in-flight calls get `grace_s` seconds (None: cancelled at once). With no grace
        this returns once the port is released, so a test may bind it again straight away."""
        future = asyncio.run_coroutine_threadsafe(self.aio_server.stop(grace_s), self._loop.loop)
        future.add_done_callback(lambda _: self._finish())
        if grace_s is None:
            future.result()
        return _Stopped(self._stopped)

    def _finish(self) -> None:
        try:
            self._on_stopped()
        finally:
            self._stopped.set()

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return self._stopped.wait(timeout_s)
