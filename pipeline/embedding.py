"""Embedding: the async scheduler that turns texts into vectors through a provider, losing none.

Batches, in-flight and rate limits (learned: ratelimit.py), retries, 413 splits; knows no Parquet.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from .config import EmbeddingConfig
from .errors import (
    AuthError,
    BadResponseError,
    ProviderError,
    RateLimitError,
    RequestTooLargeError,
    RetryAfterTooLongError,
)
from .limiter import Limiter, LocalLimiter
from .providers.base import EmbeddingProvider
from .providers.retry import explain_retry_after, usable_retry_after
from .ratelimit import BatchSizer, batch_ceiling
from .records import ModelSpec

__all__ = ["EmbedItem", "EmbedStats", "embed_items", "plan_batches"]

log = logging.getLogger("pipeline.embedding")

Splitter = Callable[[str], list[tuple[int, int]]]
OnBatch = Callable[[list[str], np.ndarray], Awaitable[None]]
OnFailed = Callable[[list[str]], None]  # keys that will not be embedded this run (called on the loop)

RATE_LIMIT_ATTEMPTS_FACTOR = 5  # a batch may meet 5x max_attempts 429s: they cost the server nothing
ABORT_AFTER_FAILED_BATCHES = 5  # this many batches failing in a row, none succeeding: stop spending
FEED_CHUNK = 64  # items handed from the producer thread to the event loop at a time
SPARE_WORKERS = 2.0  # workers per in-flight slot: one waits out a backoff while another sends
RATE_BOUND_WINDOW_S = 2.0  # the request rate binds if the pacer held a request back this recently


@dataclass(frozen=True)
class EmbedItem:
    key: str  # the cache key (content hash); results are matched by key, never by position alone
    text: str
    tokens: int


@dataclass
class EmbedStats:
    texts: int = 0
    requests: int = 0
    retries: int = 0
    tokens: int = 0
    split_texts: int = 0
    rate_limited: int = 0  # 429s met
    errors: Counter[str] = field(default_factory=Counter)
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason, after all attempts
    aborted: str = ""  # why the run stopped sending early, if it did
    batch_texts: int = 0  # texts per request at the end (after any 413s taught a smaller size)
    concurrency: int = 0  # in-flight limit at the end
    requests_per_s: float = 0.0  # pace at the end; 0 when never paced
    seconds: float = 0.0

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0

    def add(self, other: EmbedStats) -> None:
        """Count in another embed_items call's stats (the Ray engine's workers); its end state is the latest.

        `seconds` stays: calls that overlap do not add up to wall time.
        """
        for name in ("texts", "requests", "retries", "tokens", "split_texts", "rate_limited"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.update(other.errors)
        self.failed.update(other.failed)
        self.aborted = self.aborted or other.aborted
        if other.requests:
            self.batch_texts, self.concurrency = other.batch_texts, other.concurrency
            self.requests_per_s = other.requests_per_s


def plan_batches(items: Iterable[EmbedItem], max_texts: int, max_tokens: int = 0) -> list[list[EmbedItem]]:
    """Consecutive batches of at most max_texts items and (if set) max_tokens summed tokens."""
    batches: list[list[EmbedItem]] = []
    current: list[EmbedItem] = []
    tokens = 0
    for item in items:
        if current and (len(current) >= max_texts or (max_tokens and tokens + item.tokens > max_tokens)):
            batches.append(current)
            current, tokens = [], 0
        current.append(item)
        tokens += item.tokens
    if current:
        batches.append(current)
    return batches


def _retryable(exc: BaseException) -> bool:
    # A Retry-After past the cap is retryable for a later run, not within this one.
    return isinstance(exc, ProviderError) and exc.retryable and not isinstance(exc, RetryAfterTooLongError)


class _Run:
    """One embed_items call: the queue of items, the limits, the workers' shared state and the stats."""

    def __init__(self, provider: EmbeddingProvider, cfg: EmbeddingConfig, on_batch: OnBatch,
                 progress: Callable[[int], None] | None, splitter: Splitter | None,
                 backoff_initial_s: float, backoff_max_s: float, on_failed: OnFailed | None = None,
                 limiter: Limiter | None = None) -> None:
        spec: ModelSpec = provider.spec
        self.provider, self.spec, self.cfg = provider, spec, cfg
        self.on_batch, self.progress, self.splitter, self.on_failed = on_batch, progress, splitter, on_failed
        self.produced = 0  # items the producer thread has handed over; it waits while too many are not done
        self._room = threading.Event()
        self.stats = EmbedStats()
        # A configured batch_size is the size: no growth (a 413 still teaches a smaller one, or nothing gets in).
        start = cfg.batch_size or spec.max_batch_texts
        ceiling = 0 if cfg.batch_size else batch_ceiling(start, spec.dimension, spec.max_input_tokens,
                                                         spec.max_batch_tokens)
        self.sizer = BatchSizer(start, ceiling)
        self.max_tokens = spec.max_batch_tokens
        # A local model is CPU-bound and threads itself: parallel batches would only queue on its lock.
        limit = min(cfg.concurrency, spec.max_concurrency) if spec.max_concurrency else cfg.concurrency
        # The limits of the key; shared with other processes when the caller passes theirs (the Ray engine).
        self.limiter = limiter or LocalLimiter(limit, cfg.requests_per_minute, cfg.tokens_per_minute)
        self.workers = max(2, math.ceil(limit * SPARE_WORKERS))
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.failing = 0  # failed responses (5xx, timeouts, drops, 429s naming no wait) since the last success
        self.pending: deque[EmbedItem] = deque()
        self.pending_tokens = 0
        self.feeding = True
        self.busy = 0  # batches taken from the queue and not yet finished
        self.failed_in_a_row = 0
        self._probing = False  # a request is testing a batch size a 413 taught
        self._trial: list[EmbedItem] | None = None  # the batch testing a larger size, if one is out
        self._paced_at = -math.inf  # when the request rate last held a request back (pacer wait, Retry-After)
        self._tokens_bound_at = -math.inf  # when tokens_per_minute last held a request back
        self._waiters: list[asyncio.Future[None]] = []

    # -- the queue

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def add(self, items: Iterable[EmbedItem]) -> None:
        """Queue items (on the loop thread); after an abort they are recorded as failed at once."""
        for item in items:
            if self.stats.aborted:
                self._record_failed([item.key], self.stats.aborted)
            else:
                self.pending.append(item)
                self.pending_tokens += item.tokens
        self._wake()

    def _push_back(self, batch: list[EmbedItem]) -> None:
        if self.stats.aborted:
            self._record_failed([item.key for item in batch], self.stats.aborted)
            return
        for item in reversed(batch):
            self.pending.appendleft(item)
            self.pending_tokens += item.tokens

    def _cut(self, limit: int) -> list[EmbedItem]:
        batch: list[EmbedItem] = []
        tokens = 0
        while self.pending and len(batch) < limit:
            item = self.pending[0]
            if batch and self.max_tokens and tokens + item.tokens > self.max_tokens:
                break
            batch.append(self.pending.popleft())
            tokens += item.tokens
        self.pending_tokens -= tokens
        return batch

    async def next_batch(self) -> list[EmbedItem] | None:
        """A full batch (or the last, short one once the feed has ended); None when nothing is left."""
        while True:
            if self.stats.aborted:
                return None
            limit = self.sizer.limit
            full = len(self.pending) >= limit or bool(self.max_tokens and self.pending_tokens >= self.max_tokens)
            if self.pending and (full or not self.feeding):
                self.busy += 1
                trial = self.sizer.next_trial(self._rate_bound())
                if trial and len(self.pending) >= 2 * trial:  # a refused trial's texts never end up last
                    batch = self._cut(trial)
                    if len(batch) == trial:  # (a token cap may cut it short: then it tests nothing)
                        self.sizer.trial, self._trial = trial, batch
                    return batch
                return self._cut(limit)
            if not self.feeding and not self.pending and not self.busy:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    async def feed(self, items: Iterable[EmbedItem]) -> None:
        """Move items into the queue; a lazy iterable is drained in a thread, so producing overlaps sending."""
        try:
            if isinstance(items, Sequence):
                self.add(items)
                return
            loop = asyncio.get_running_loop()
            stop = threading.Event()

            def pump() -> None:
                chunk: list[EmbedItem] = []
                for item in items:
                    if stop.is_set():
                        return
                    # Backpressure: the producer (reading and chunking the corpus) stays at most
                    # max_queued_texts ahead of the embedded, so memory follows the setting, not the corpus.
                    while self.produced - self.stats.texts - len(self.stats.failed) >= self.cfg.max_queued_texts:
                        if chunk:
                            loop.call_soon_threadsafe(self.add, chunk)
                            chunk = []
                        self._room.wait(0.05)
                        self._room.clear()
                        if stop.is_set():
                            return
                    self.produced += 1
                    chunk.append(item)
                    if len(chunk) >= FEED_CHUNK:
                        loop.call_soon_threadsafe(self.add, chunk)
                        chunk = []
                loop.call_soon_threadsafe(self.add, chunk)

            try:
                await asyncio.to_thread(pump)
            finally:
                stop.set()  # if the run is cancelled, the producer stops at its next item
        finally:
            self.feeding = False
            self._wake()
            log.debug("feed done: %d queued, %d embedded", len(self.pending), self.stats.texts)

    def _rate_bound(self) -> bool:
        """The request rate (configured, or a rate limiter's 429s) is what holds requests back, not tokens."""
        now = time.monotonic()
        return now - self._paced_at < RATE_BOUND_WINDOW_S and now - self._tokens_bound_at >= RATE_BOUND_WINDOW_S

    async def report(self, every_s: float = 2.0) -> None:
        """Log the scheduler's state now and then (at -vv): where a slow run loses its time."""
        while True:
            await asyncio.sleep(every_s)
            s, limits = self.stats, await self.limiter.state()
            log.debug("%d texts, %d requests, %d 429s, %d queued, %d in flight of %d, %.1f req/s pace, "
                      "%d texts per request", s.texts, s.requests, s.rate_limited, len(self.pending),
                      limits.in_flight, limits.limit, limits.rate, self.sizer.limit)

    # -- one batch

    async def work(self) -> None:
        while (batch := await self.next_batch()) is not None:
            try:
                await self._process(batch)
            finally:
                if batch is self._trial:
                    self._trial = None
                    self.sizer.abandon(len(batch))  # (no-op unless it ended without an answer on its size)
                self.busy -= 1
                self._wake()

    async def _process(self, batch: list[EmbedItem]) -> None:
        try:
            try:
                matrix = await self._request(batch, queued=True)  # may resize `batch` to a size learned meanwhile
            except RequestTooLargeError:
                if len(batch) > 1:  # too many texts (or tokens) per request: recut these at the learned size
                    self._push_back(batch)
                    return
                self.sizer.reset()  # a single text refused: the earlier 413s may have been this text
                matrix = (await self._embed_long_text(batch[0].text))[None, :]
        except ProviderError as e:
            self._fail(batch, e)
            return
        self.failed_in_a_row = 0
        await self.on_batch([item.key for item in batch], matrix)
        self.stats.texts += len(batch)
        self._room.set()
        self.stats.tokens += sum(item.tokens for item in batch)
        if self.progress:
            self.progress(len(batch))

    def _record_failed(self, keys: list[str], reason: str) -> None:
        for key in keys:
            self.stats.failed[key] = reason
        self._room.set()
        if self.on_failed is not None and keys:
            self.on_failed(keys)

    def _fail(self, batch: list[EmbedItem], error: ProviderError) -> None:
        self._record_failed([item.key for item in batch], str(error))
        log.warning("batch of %d texts failed: %s", len(batch), error)
        self.failed_in_a_row += 1
        if isinstance(error, (AuthError, RetryAfterTooLongError)) or \
                self.failed_in_a_row >= ABORT_AFTER_FAILED_BATCHES:
            self._abort(f"not sent: the run stopped after {self.failed_in_a_row} failed batch(es), "
                        f"last: {error}")

    def _abort(self, reason: str) -> None:
        if self.stats.aborted:
            return
        log.error("%s", reason)
        self.stats.aborted = reason
        self._record_failed([item.key for item in self.pending], reason)
        self.pending.clear()
        self.pending_tokens = 0
        self._wake()

    async def _request(self, batch: list[EmbedItem], *, queued: bool = False) -> np.ndarray:
        """One API call under the limits, retried with backoff; a 413 surfaces as RequestTooLargeError.

        Just before each send, a batch cut before the server taught a smaller size gives its excess back,
        and a `queued` one (cut from the queue, not a piece of a long text) cut before the size grew fills up.
        """
        seen: Counter[str] = Counter()  # this batch's failures ("error") and 429s ("rate")
        max_rate_limited = self.cfg.max_attempts * RATE_LIMIT_ATTEMPTS_FACTOR

        def stop(state: RetryCallState) -> bool:
            return seen["error"] >= self.cfg.max_attempts or seen["rate"] >= max_rate_limited

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, RateLimitError) and usable_retry_after(exc.retry_after, self.cfg.max_retry_after_s):
                return 0.0  # the pacer's gate already holds every request back until Retry-After has passed
            return self._backoff_s()

        async for attempt in AsyncRetrying(stop=stop, wait=wait, retry=retry_if_exception(_retryable),
                                           reraise=True):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.stats.retries += 1
                return await self._attempt(batch, seen, queued)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff_s(self) -> float:
        """The wait before a retry, from the server's failure streak rather than this batch's attempts.

        One 500 among successes is the server's bad luck, not its distress: retrying it after 0.5 s or
        more (a per-batch exponential) cost P3 of bench/embed.md 7 % of its throughput in the run's tail.
        A server failing everything lengthens the streak by the in-flight count per wave, so the wait
        reaches backoff_max_s within two waves. Jitter: 0.5x to 1.5x.
        """
        streak = max(1, self.failing)
        base = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** min(streak - 1, 60))
        return min(self.backoff_max_s, base * random.uniform(0.5, 1.5))

    async def _attempt(self, batch: list[EmbedItem], seen: Counter[str], queued: bool) -> np.ndarray:
        slot = await self.limiter.acquire(first=bool(seen) or batch is self._trial)  # a trial: soon
        try:
            if self.stats.aborted:  # taken before the run stopped: do not spend a request on it
                raise ProviderError(self.stats.aborted, provider=self.provider.name, retryable=False)
            probe = await self._await_probe()
            try:
                allowed = self.sizer.trial if batch is self._trial and self.sizer.trial else self.sizer.limit
                if len(batch) > allowed:
                    if batch is self._trial:
                        self.sizer.abandon(len(batch))
                        self._trial = None
                    self._push_back(batch[allowed:])
                    del batch[allowed:]
                    self._wake()
                elif queued and len(batch) < allowed:
                    self._top_up(batch, allowed)  # cut before the size grew: it leaves full
                texts = [item.text for item in batch]
                sent_at = await self._pace(sum(item.tokens for item in batch))
                self.stats.requests += 1
                # The slot frees as soon as the body is in: the server is done, decoding is ours.
                matrix = await self.provider.embed_batch(texts, on_received=slot.release)
                if matrix.shape != (len(texts), self.spec.dimension):
                    raise BadResponseError(f"expected {len(texts)} vectors of {self.spec.dimension} dims, got "
                                           f"shape {tuple(matrix.shape)}", provider=self.provider.name,
                                           endpoint="embeddings")
                # Learned before the probe (if this is one) lets the others go.
                self.failing = 0
                self.limiter.succeeded()
                self.sizer.succeeded(len(texts))
                return matrix
            except ProviderError as e:
                self.stats.errors[type(e).__name__] += 1
                if isinstance(e, RequestTooLargeError):
                    self.sizer.too_large(len(texts))  # (a single text: the caller splits it)
                elif isinstance(e, RateLimitError):
                    seen["rate"] += 1
                    self.stats.rate_limited += 1
                    asked = usable_retry_after(e.retry_after, self.cfg.max_retry_after_s)
                    if asked is not None:  # a rate limit: it names the moment a request can get in again
                        self._paced_at = time.monotonic()
                        self.limiter.rate_limited(asked, sent_at)
                    elif e.retry_after is not None:  # inf, or a day: not worth holding the lock and the job
                        raise explain_retry_after(e, self.cfg.max_retry_after_s) from None
                    else:  # GigaChat's 429 is "too many concurrent requests" (gigachat-api.md §6)
                        self.limiter.throttled()
                        self.failing += 1  # no moment named: a run of them backs off like failures
                else:
                    seen["error"] += 1
                    self.failing += 1
                raise
            finally:
                if probe:
                    self._probing = False
                    self._wake()
        finally:
            slot.release()

    def _top_up(self, batch: list[EmbedItem], size: int) -> None:
        tokens = sum(item.tokens for item in batch)
        while self.pending and len(batch) < size:
            item = self.pending[0]
            if self.max_tokens and tokens + item.tokens > self.max_tokens:
                break
            batch.append(self.pending.popleft())
            self.pending_tokens -= item.tokens
            tokens += item.tokens

    async def _await_probe(self) -> bool:
        """While a 413-taught batch size is unproven, one request tests it and the others wait for it.

        Returns True when this request is the probe. Without this, every request in flight would learn
        the same lesson with a 413 of its own, at every step of the search.
        """
        while self.sizer.probing and self._probing:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        if self.sizer.probing:
            self._probing = True
            return True
        return False

    async def _pace(self, tokens: int) -> float:
        """Wait until the limits let this request go; the moment, on the limiter's clock."""
        pace = await self.limiter.pace(tokens)
        if pace.rate_bound:
            self._paced_at = time.monotonic()
        if pace.tokens_bound:
            self._tokens_bound_at = time.monotonic()
        return pace.sent_at

    async def _embed_long_text(self, text: str) -> np.ndarray:
        """A text the server refused as too long: embed its pieces, average their unit vectors."""
        if self.splitter is None or len(text) < 2:
            raise RequestTooLargeError("text too long and no splitter", provider=self.provider.name)
        self.stats.split_texts += 1
        parts = []
        for a, b in self.splitter(text):
            piece = text[a:b]
            try:
                parts.append((await self._request([EmbedItem("", piece, max(1, len(piece) // 3))]))[0])
            except RequestTooLargeError:
                parts.append(await self._embed_long_text(piece))
        stacked = np.stack(parts).astype(np.float32)
        norms = np.linalg.norm(stacked, axis=1, keepdims=True)
        mean = (stacked / np.where(norms > 0, norms, 1)).mean(axis=0)
        scale = float(norms.mean())  # keep the service's typical norm; normalisation happens later
        return (mean / (np.linalg.norm(mean) or 1.0) * scale).astype(np.float32)


async def embed_items(
    provider: EmbeddingProvider,
    items: Iterable[EmbedItem],
    cfg: EmbeddingConfig,
    *,
    on_batch: OnBatch,
    on_failed: OnFailed | None = None,
    progress: Callable[[int], None] | None = None,
    splitter: Splitter | None = None,
    backoff_initial_s: float = 0.05,
    backoff_max_s: float = 30.0,
    limiter: Limiter | None = None,
) -> EmbedStats:
    """Embed every item; hand each finished batch (keys, raw float32 matrix) to `on_batch`, and the keys of
    items that will not be embedded this run to `on_failed`.

    `items` may be lazy (a generator that chunks as it goes): it is drained in a worker thread while
    requests are already in flight. Returns stats; items that failed after all attempts are listed in
    stats.failed with their reason, not raised, so the caller can keep what succeeded and exit non-zero.
    `limiter`: the key's limits when they are shared with other processes (the Ray engine's actor); by
    default this call's own (LocalLimiter: [embedding] concurrency, requests and tokens per minute).
    Raises what on_batch or the items iterable raise.
    """
    run = _Run(provider, cfg, on_batch, progress, splitter, backoff_initial_s, backoff_max_s, on_failed, limiter)
    started = time.perf_counter()
    tasks = [asyncio.create_task(run.feed(items))] + [asyncio.create_task(run.work()) for _ in range(run.workers)]
    reporter = asyncio.create_task(run.report()) if log.isEnabledFor(logging.DEBUG) else None
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in [*tasks, reporter] if reporter else tasks:
            task.cancel()
        await asyncio.gather(*tasks, *([reporter] if reporter else []), return_exceptions=True)
    stats = run.stats
    # none, by construction; but an item is never dropped without a word
    run._record_failed([item.key for item in run.pending if item.key not in stats.failed], "not sent")
    stats.seconds = time.perf_counter() - started
    stats.batch_texts = run.sizer.limit
    limits = await run.limiter.state()
    stats.concurrency = limits.limit
    stats.requests_per_s = limits.rate if limits.rate < math.inf else 0.0
    return stats
