"""How a followed event stream comes back after the trainer went away (a restart, a drain that ends open streams
with UNAVAILABLE, the network): the same rules for the sync and the async client."""

from __future__ import annotations

import time

import grpc

from .errors import TrainerError

# Codes after which a follow-up stream reconnects: the trainer went away (restart, drain, network) for a while.
RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
FIRST_RETRY_DELAY_S, MAX_RETRY_DELAY_S = 0.1, 2.0


class Reconnects:
    """Doubling delays from 0.1 s to 2 s, reset by every event received; gives up (raises the failure) on a code
    that is not worth retrying, or once the trainer has been unreachable for `timeout_s`."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._delay_s = FIRST_RETRY_DELAY_S
        self._unreachable_since: float | None = None

    def received(self) -> None:
        self._delay_s, self._unreachable_since = FIRST_RETRY_DELAY_S, None

    def delay_after(self, failure: TrainerError | None) -> float:
        """Seconds to wait before the next attempt; `failure` None: the stream ended cleanly before the job did
        (a draining trainer closed it)."""
        if failure is not None:
            if failure.code not in RECONNECT_CODES:
                raise failure
            self._unreachable_since = self._unreachable_since or time.monotonic()
            if time.monotonic() - self._unreachable_since > self.timeout_s:
                raise failure
        delay_s = self._delay_s
        self._delay_s = min(2 * delay_s, MAX_RETRY_DELAY_S)
        return delay_s
