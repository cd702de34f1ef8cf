"""The one bounded thread pool that the async gRPC servers hand blocking work to (SQLite, dataset checks, file
I/O). The event loop itself only moves messages, so an open stream costs a coroutine, never a thread, and
health checks answer while every pool thread is busy."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class BlockingCalls:
    """`await blocking(fn, *args, **kwargs)` runs `fn` on the pool and returns its result (or raises its error)."""

    def __init__(self, max_workers: int, *, thread_name_prefix: str = "grpc-blocking"):
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)

    async def __call__(self, fn: Callable[..., T], *args, **kwargs) -> T:
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)  # calls already running finish on their own
