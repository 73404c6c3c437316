"""Rate limits: what the server allows, as the embedder learns it: request pacing and texts per request.

Pure and sync, driven by a clock value the caller passes in; the embedder does all waiting and I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BatchSizer", "RequestPacer"]

RATE_DECREASE = 0.9  # multiplicative decrease of the pace on a rate-limit 429, once per round trip
RATE_INCREASE = 0.02  # requests/s added per clean response: the pace grows ~2 % a second at any rate
MIN_RATE = 0.2  # requests/s: never slower than one request every five seconds
FIRST_ESTIMATE_WINDOW_S = 1.0  # the first 429 sets the pace from the sends of the last second


class RequestPacer:
    """Paces request starts (GCRA, no burst): configured requests/s, or learned from 429s with Retry-After.

    Unconfigured, it lets requests go as fast as the in-flight limit allows until the server says
    "rate limited"; then it paces at the rate just observed and runs AIMD: x0.9 on a 429 (once per
    round trip, judged by when the refused request was sent), +0.02 requests/s per success. A server
    that banks unused capacity (a token bucket) gives back the dips, so the long-run rate is the
    server's. A Retry-After closes the gate for every request until it has passed: the server just said
    no request can get in before then, so sending would only buy more 429s.
    """

    def __init__(self, max_rate: float = 0.0) -> None:
        self.max_rate = max_rate if max_rate > 0 else math.inf  # configured ceiling, requests/s
        self.rate = self.max_rate
        self._tat = 0.0  # GCRA theoretical arrival time of the next request
        self._gate = 0.0  # no request starts before this (Retry-After)
        self._last_decrease = -math.inf
        self._recent: list[float] = []  # start times, kept only while the pace is unknown

    def delay(self, now: float) -> float:
        """0.0 and the slot is taken; else how long to wait before asking again (nothing is taken)."""
        start = max(self._tat, self._gate)
        if start > now:
            return start - now
        self._tat = max(self._tat, now) + (1.0 / self.rate if self.rate < math.inf else 0.0)
        if self.rate == math.inf:
            self._recent.append(now)
            if len(self._recent) > 4096:
                del self._recent[:2048]
        return 0.0

    def rate_limited(self, now: float, retry_after: float, sent_at: float) -> None:
        """A 429 with Retry-After for a request started at `sent_at`."""
        self._gate = max(self._gate, now + retry_after)
        if sent_at < self._last_decrease:
            return  # sent before the last decrease: that decrease already answered this overshoot
        self._last_decrease = now
        if self.rate == math.inf:
            window = [t for t in self._recent if t >= now - FIRST_ESTIMATE_WINDOW_S]
            observed = len(window) / FIRST_ESTIMATE_WINDOW_S if window else 1.0
            self._recent = []
            self.rate = max(MIN_RATE, observed * RATE_DECREASE)
        else:
            self.rate = max(MIN_RATE, self.rate * RATE_DECREASE)

    def succeeded(self) -> None:
        if self.rate < self.max_rate:
            self.rate = min(self.max_rate, self.rate + RATE_INCREASE)


@dataclass
class BatchSizer:
    """Texts per request, learned from 413s of multi-text batches by binary search between two sizes.

    `good` is the largest size the server took, `bad` the smallest it refused as too large; the limit
    moves to their middle until they meet. A size refused at or below `good` contradicts a count limit,
    so that evidence is dropped. A single text refused shows the 413s came from one over-long text, not
    the count: reset() forgets everything learned.
    """

    start: int
    limit: int = 0
    good: int = 0
    bad: int = 0  # 0: no refusal known
    refusals: int = 0

    def __post_init__(self) -> None:
        self.start = max(1, self.start)
        self.limit = self.limit or self.start

    def too_large(self, n: int) -> None:
        """A batch of n > 1 texts drew a 413."""
        if n <= 1:
            return
        self.refusals += 1
        if self.bad and n >= self.bad:
            return  # nothing new: sent before the limit came down
        if n <= self.good:
            self.good = 0
        self.bad = n
        self.limit = max(1, min(self.limit, (self.good + self.bad) // 2))

    def succeeded(self, n: int) -> None:
        """A batch of n texts went through."""
        self.good = max(self.good, n)
        if self.bad and n >= self.limit and self.bad - self.good > 1:
            self.limit = (self.good + self.bad) // 2  # still searching upwards

    @property
    def probing(self) -> bool:
        """After a refusal, a limit not yet proven: one request should test it before the rest follow."""
        return bool(self.bad) and self.limit > self.good

    def reset(self) -> None:
        self.limit, self.good, self.bad = self.start, 0, 0

