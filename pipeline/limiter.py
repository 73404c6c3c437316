"""Limiter: the gate every embedding request passes: an in-flight slot, the request pace, tokens per minute.

The embedder asks it before each request and tells it the outcome; LocalLimiter is the in-process one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aiolimiter import AsyncLimiter

from .inflight import AdaptiveConcurrency
from .ratelimit import RequestPacer

__all__ = ["Limiter", "LimiterState", "LocalLimiter", "Pace", "Slot"]


class Slot(Protocol):
    """One in-flight request's place; release() may be called more than once (the first one counts)."""

    def release(self) -> None: ...


@dataclass(frozen=True)
class Pace:
    """A request let go: when (on the limiter's clock, for rate_limited) and what held it back, if anything."""

    sent_at: float
    rate_bound: bool = False  # the request rate (configured, or learned from 429s) made it wait
    tokens_bound: bool = False  # tokens_per_minute made it wait


@dataclass(frozen=True)
class LimiterState:
    limit: int  # in-flight requests allowed now
    in_flight: int
    rate: float  # requests/s the pace allows now; inf while unpaced


@runtime_checkable
class Limiter(Protocol):
    """What one key (an API credential at an endpoint) allows, shared by every request sent with it.

    Per request: acquire() a slot, pace() just before sending, then exactly one of succeeded(),
    rate_limited() (a 429 naming its wait) or throttled() (a 429 naming none), and the slot's release().
    """

    async def acquire(self, *, first: bool = False) -> Slot: ...

    async def pace(self, tokens: int) -> Pace: ...

    def succeeded(self) -> None: ...

    def rate_limited(self, retry_after: float, sent_at: float) -> None: ...

    def throttled(self) -> None: ...

    async def state(self) -> LimiterState: ...


class LocalLimiter:
    """The limits of one process: AdaptiveConcurrency, RequestPacer and a tokens-per-minute bucket."""

    def __init__(self, concurrency: int, requests_per_minute: float = 0.0, tokens_per_minute: float = 0.0) -> None:
        self.concurrency = AdaptiveConcurrency(concurrency)
        self.pacer = RequestPacer(requests_per_minute / 60)
        self.tokens_per_minute = tokens_per_minute
        self.tpm = AsyncLimiter(tokens_per_minute, 60) if tokens_per_minute else None

    async def acquire(self, *, first: bool = False) -> Slot:
        return await self.concurrency.acquire(first=first)

    async def pace(self, tokens: int) -> Pace:
        rate_bound = tokens_bound = False
        while (delay := self.pacer.delay(time.monotonic())) > 0:
            rate_bound = True
            await asyncio.sleep(delay)
        if self.tpm:
            amount = min(tokens, self.tokens_per_minute)
            if not self.tpm.has_capacity(amount):
                tokens_bound = True
            await self.tpm.acquire(amount)
        return Pace(time.monotonic(), rate_bound, tokens_bound)

    def succeeded(self) -> None:
        self.concurrency.succeeded()
        self.pacer.succeeded()

    def rate_limited(self, retry_after: float, sent_at: float) -> None:
        self.pacer.rate_limited(time.monotonic(), retry_after, sent_at)

    def throttled(self) -> None:
        self.concurrency.throttled()

    async def state(self) -> LimiterState:
        return self.snapshot()

    def snapshot(self) -> LimiterState:
        return LimiterState(self.concurrency.limit, self.concurrency.in_flight, self.pacer.rate)
