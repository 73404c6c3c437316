"""In-flight limit: the embedder's adaptive semaphore (a 429 costs one slot, clean responses give one back).

Async, on the embedder's event loop; fair: a freed slot goes to the longest waiter, retries first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["AdaptiveConcurrency", "Slot"]


class AdaptiveConcurrency:
    """A semaphore whose limit drops by one per concurrency 429 and grows by one after clean responses.

    Additive both ways: a refusal says the server had one request too many, so it costs one slot, not
    half of them (halving at 8 in flight would throw away 40 % of the throughput for one stray 429);
    a server allowing 1 where we sent 8 answers 7 refusals and the limit falls to 1 as quickly.
    """

    def __init__(self, limit: int, *, grow_after: int = 8) -> None:
        self.max_limit = limit
        self.limit = limit
        self.in_flight = 0
        self.grow_after = grow_after
        self._clean = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, *, first: bool = False) -> Slot:
        """Wait for a free slot; the returned Slot gives it back once, whoever calls release() first.

        Fair: a freed slot is handed to the longest waiter, so a worker that just released cannot take
        it back ahead of the queue. `first` queues ahead of the other waiters: a retry goes before fresh
        batches, so that a batch unlucky enough to fail is not also the one that finishes last.
        """
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return Slot(self)
        waiter = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            await waiter  # resolved once a slot is ours: in_flight already counts it
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed over just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        return Slot(self)

    def _release(self) -> None:
        self.in_flight -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def throttled(self) -> None:
        self._clean = 0
        self.limit = max(1, self.limit - 1)

    def succeeded(self) -> None:
        self._clean += 1
        if self._clean >= self.grow_after and self.limit < self.max_limit:
            self._clean = 0
            self.limit += 1
            self._hand_over()


class Slot:
    """One in-flight request's place; released when the response is in hand, before it is decoded."""

    def __init__(self, owner: AdaptiveConcurrency) -> None:
        self._owner: AdaptiveConcurrency | None = owner

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release()
