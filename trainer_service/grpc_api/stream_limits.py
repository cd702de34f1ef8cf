"""Limits on open streams (Watch, uploads), so that one client, or all together, cannot hold the trainer's
memory and file handles without bound. A refused stream gets RESOURCE_EXHAUSTED naming the setting."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..errors import TooManyStreamsError


def client_of(peer: str) -> str:
    """The client's host from grpc's peer string ('ipv4:10.0.0.7:51234', 'ipv6:[::1]:51234'): the port
    changes with every connection, the host does not."""
    kind, _, address = peer.partition(":")
    if kind == "ipv6" and address.startswith("["):
        return address[1:].partition("]")[0]
    if kind == "ipv4":
        return address.rpartition(":")[0]
    return peer  # unix sockets and the like: the whole peer string


class StreamLimits:
    """Counts open streams in total and per client. Used from the event loop only, so no lock."""

    def __init__(self, max_total: int, max_per_client: int):
        self.max_total, self.max_per_client = max_total, max_per_client
        self._by_client: collections.Counter[str] = collections.Counter()
        self._total = 0

    @property
    def open_streams(self) -> int:
        return self._total

    @asynccontextmanager
    async def hold(self, peer: str) -> AsyncIterator[None]:
        client = client_of(peer)
        if self._total >= self.max_total:
            raise TooManyStreamsError("max_streams_total", self.max_total, "in total")
        if self._by_client[client] >= self.max_per_client:
            raise TooManyStreamsError("max_streams_per_client", self.max_per_client, f"from {client}")
        self._total += 1
        self._by_client[client] += 1
        try:
            yield
        finally:
            self._total -= 1
            self._by_client[client] -= 1
            if not self._by_client[client]:
                del self._by_client[client]
