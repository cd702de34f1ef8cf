"""Job events fanned out to every Watch stream from one place.

Workers write events straight into the SQLite file from other processes, so something has to look for them:
here one poller asks the store once per interval which jobs have new events (one query however many streams
are open) and wakes up at once when this process writes one itself. Each watched job's events are read from
the store once and kept in memory while anyone watches it; a watcher only waits on its job's notification.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .domain import JobEvent, JobStatus
from .errors import StreamDrainedError
from .store import JobStore

logger = logging.getLogger(__name__)

RunBlocking = Callable[..., Awaitable[Any]]
_PAGE_EVENTS = 500  # JobStore.events_after's page


class _JobFeed:
    """One watched job: its events so far, in sequence order, and a wake-up for its watchers."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.events: list[JobEvent] = []
        self.sequences: list[int] = []
        self.ended = False  # a terminal status event is among `events`
        self.watchers = 0
        self.refresh_lock = asyncio.Lock()
        self._changed = asyncio.Event()

    @property
    def last_sequence(self) -> int:
        return self.sequences[-1] if self.sequences else 0

    def add(self, events: list[JobEvent]) -> None:
        fresh = [event for event in events if event.sequence > self.last_sequence]
        if not fresh:
            return
        self.events += fresh
        self.sequences += [event.sequence for event in fresh]
        self.ended = self.ended or any(_is_terminal(event) for event in fresh)
        self._changed.set()
        self._changed = asyncio.Event()  # the next wait is for the next change

    def after(self, sequence: int) -> list[JobEvent]:
        return self.events[bisect.bisect_right(self.sequences, sequence):]

    async def changed(self) -> None:
        await self._changed.wait()

    def wake(self) -> None:
        self._changed.set()


def _is_terminal(event: JobEvent) -> bool:
    return event.kind == "status_changed" and JobStatus(event.payload["status"]).is_terminal


class EventHub:
    """Lives on the gRPC server's event loop; store reads go through `run_blocking` (the bounded pool)."""

    def __init__(self, store: JobStore, run_blocking: RunBlocking, *, poll_interval_s: float):
        self.store = store
        self._blocking = run_blocking
        self.poll_interval_s = poll_interval_s
        self._feeds: dict[str, _JobFeed] = {}
        self._poked = asyncio.Event()
        self._closed = False
        self._newest_rowid: int | None = None
        self._poller: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def watched_jobs(self) -> int:
        return len(self._feeds)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._newest_rowid, _ = await self._blocking(self.store.jobs_with_events_after, None)
        self.store.add_listener(self._on_local_event)
        self._poller = asyncio.create_task(self._poll(), name="event-hub-poller")

    async def close(self) -> None:
        """Ends every open stream with StreamDrainedError (clients reconnect with their last sequence)."""
        self._closed = True
        self.store.remove_listener(self._on_local_event)
        for feed in self._feeds.values():
            feed.wake()
        if self._poller is not None:
            self._poller.cancel()

    async def follow(self, job_id: str, after_sequence: int) -> AsyncIterator[JobEvent]:
        """Events after `after_sequence`, then live ones; ends once the job has ended and all are sent.
        Raises JobNotFoundError before the first event for an unknown job."""
        if self._closed:
            raise StreamDrainedError(after_sequence)
        feed = self._feeds.get(job_id)
        if feed is None:
            await self._blocking(self.store.get_job, job_id)  # NOT_FOUND before the stream starts
            feed = self._feeds.setdefault(job_id, _JobFeed(job_id))
        feed.watchers += 1
        sent = after_sequence
        try:
            if not feed.events:
                await self._refresh(feed)
            while True:
                pending = feed.after(sent)
                for event in pending:
                    yield event  # the client may take a while: more events can arrive meanwhile
                    sent = event.sequence
                if pending:
                    continue  # look again before waiting, or a wake-up that came during a send is lost
                if feed.ended:
                    return
                if self._closed:
                    raise StreamDrainedError(sent)
                await feed.changed()
        finally:
            feed.watchers -= 1
            if not feed.watchers and self._feeds.get(job_id) is feed:
                del self._feeds[job_id]

    async def _refresh(self, feed: _JobFeed) -> None:
        async with feed.refresh_lock:  # one read per job however many watchers woke up
            while True:
                events = await self._blocking(self.store.events_after, feed.job_id, feed.last_sequence)
                feed.add(events)
                if len(events) < _PAGE_EVENTS:
                    return

    def _on_local_event(self, job_id: str) -> None:
        """Runs on whichever thread committed the event."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._poked.set)

    async def _poll(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._poked.wait(), self.poll_interval_s)
            except TimeoutError:
                pass
            self._poked.clear()
            try:
                await self._deliver_new_events()
            except Exception:  # noqa: BLE001 - the poller must outlive one failed read; the log has it
                logger.exception("event hub: reading new events failed")

    async def _deliver_new_events(self) -> None:
        self._newest_rowid, job_ids = await self._blocking(self.store.jobs_with_events_after, self._newest_rowid)
        # Looked up after the read: a feed registered meanwhile read the store itself after registering.
        feeds = [self._feeds[job_id] for job_id in job_ids if job_id in self._feeds]
        await asyncio.gather(*(self._refresh(feed) for feed in feeds))
