"""Rate limits: what the server allows, as the embedder learns it: request pacing and texts per request.

Pure and sync, driven by a clock value the caller passes in; the embedder does all waiting and I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BatchSizer", "RequestPacer", "batch_ceiling"]

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


GROWTH_FACTOR = 2.0  # a rate-bound run tests twice its proven batch size next (no refusal known yet)
MAX_BATCH_TEXTS = 1000  # growth never goes past this many texts per request, whatever else allows
MAX_RESPONSE_FLOATS = 1_000_000  # ... nor past this many vector numbers in one response (~20 MB of JSON)


def batch_ceiling(start: int, dimension: int = 0, max_input_tokens: int = 0, max_batch_tokens: int = 0) -> int:
    """The largest batch growth may test: our hard caps, and whole texts under a tokens-per-request cap.

    Never below `start` (the configured or registry size stands as given). The hard caps hold because
    GigaChat documents none: 1000 texts, and 1M floats per response (390 texts at 2560-d, 976 at
    1024-d), so 8 responses in flight stay near 160 MB of JSON; a real cap is found by the 413 search.
    """
    ceiling = MAX_BATCH_TEXTS
    if dimension > 0:
        ceiling = min(ceiling, MAX_RESPONSE_FLOATS // dimension)
    if max_batch_tokens > 0 and max_input_tokens > 0:
        ceiling = min(ceiling, max_batch_tokens // max_input_tokens)
    return max(start, ceiling)


@dataclass
class BatchSizer:
    """Texts per request, learned from 413s of multi-text batches, and grown while the request rate binds.

    `good` is the largest size the server took, `bad` the smallest it refused as too large. Down: a
    refusal of the current size moves the limit to the middle of the two, and while that limit is
    unproven one request (`probing`) tests it before the rest follow. Up: from a proven limit, one
    request at a time carries a larger `trial` batch while the others keep to the limit; it succeeds
    (the limit rises to it) or draws a 413 (it becomes `bad`, the limit stays). With no refusal known,
    a trial doubles the limit up to `ceiling`, and only while the caller says the request rate binds;
    between `good` and `bad` it goes halfway, or a quarter of the way after a refused trial (the cap is
    then likely nearer `good`: 200 refused above 100 tests 125, 106, 101, not 150, 125, 112, 106, 103,
    101), so the search ends at bad = good + 1 and never tests a refused size again.
    A size refused at or below `good` contradicts a count limit, so that evidence is dropped. A single
    text refused shows the 413s came from one over-long text, not the count: reset() forgets everything.
    """

    start: int
    ceiling: int = 0  # largest size a trial may test; at or below start: never grows past start
    limit: int = 0
    good: int = 0
    bad: int = 0  # 0: no refusal known
    refusals: int = 0
    trial: int = 0  # size a request is testing alongside the others; 0: none
    last_refused: bool = False  # the last trial drew a 413

    def __post_init__(self) -> None:
        self.start = max(1, self.start)
        self.ceiling = max(self.start, self.ceiling)
        self.limit = self.limit or self.start

    def too_large(self, n: int) -> None:
        """A batch of n > 1 texts drew a 413."""
        if n <= 1:
            return
        self.refusals += 1
        if n == self.trial:
            self.trial, self.last_refused = 0, True
        if self.bad and n >= self.bad:
            return  # nothing new: sent before the limit came down
        if n <= self.good:
            self.good = 0
        self.bad = n
        self.limit = max(1, min(self.limit, (self.good + self.bad) // 2))

    def succeeded(self, n: int) -> None:
        """A batch of n texts went through."""
        self.good = max(self.good, n)
        if n == self.trial:
            self.trial, self.last_refused = 0, False
        if self.good > self.limit and not (self.bad and self.good >= self.bad):
            self.limit = self.good

    def abandon(self, n: int) -> None:
        """A trial of n texts failed for another reason: another request may test a size."""
        if n == self.trial:
            self.trial = 0

    def next_trial(self, rate_bound: bool) -> int:
        """A larger size for one request to test now while the rest keep to `limit`; 0: none."""
        if self.trial or self.good < self.limit or self.limit >= self.ceiling:
            return 0  # one test at a time, and only up from a proven size
        if self.bad:
            if self.bad - self.good <= 1:
                return 0  # settled: the server's cap is known exactly
            size = self.good + max(1, (self.bad - self.good) // (4 if self.last_refused else 2))
        elif rate_bound:
            size = math.ceil(self.limit * GROWTH_FACTOR)
        else:
            return 0
        size = min(size, self.ceiling)
        return size if size > self.limit else 0

    @property
    def probing(self) -> bool:
        """After a refusal, a limit not yet proven: one request should test it before the rest follow."""
        return bool(self.bad) and self.limit > self.good

    def reset(self) -> None:
        self.limit, self.good, self.bad, self.trial = self.start, 0, 0, 0
