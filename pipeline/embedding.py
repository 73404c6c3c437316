"""Embedding: the async scheduler that turns texts into vectors through a provider, losing none.

Batches by texts and tokens, bounds in-flight requests (adaptive on 429), applies client-side
request/token rate limits, retries what is retryable, splits what is too long. Knows no Parquet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .config import EmbeddingConfig
from .errors import BadResponseError, ProviderError, RateLimitError, RequestTooLargeError
from .providers.base import EmbeddingProvider
from .records import ModelSpec

__all__ = ["AdaptiveConcurrency", "EmbedItem", "EmbedStats", "embed_items", "plan_batches"]

log = logging.getLogger("pipeline.embedding")

Splitter = Callable[[str], list[tuple[int, int]]]
OnBatch = Callable[[list[str], np.ndarray], Awaitable[None]]


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
    errors: Counter[str] = field(default_factory=Counter)
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason, after all attempts
    seconds: float = 0.0

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0


def plan_batches(items: Sequence[EmbedItem], max_texts: int, max_tokens: int = 0) -> list[list[EmbedItem]]:
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


class AdaptiveConcurrency:
    """A semaphore whose size halves on a 429 and grows by one after a run of clean responses."""

    def __init__(self, limit: int, *, grow_after: int = 20) -> None:
        self.max_limit = limit
        self.limit = limit
        self.in_flight = 0
        self.grow_after = grow_after
        self._clean = 0
        self._cond = asyncio.Condition()

    async def __aenter__(self) -> AdaptiveConcurrency:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def throttled(self) -> None:
        self._clean = 0
        self.limit = max(1, self.limit // 2)

    def succeeded(self) -> None:
        self._clean += 1
        if self._clean >= self.grow_after and self.limit < self.max_limit:
            self._clean = 0
            self.limit += 1


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retryable


def _wait(base: Callable[[RetryCallState], float]) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitError) and exc.retry_after:
            return float(exc.retry_after)
        return base(state)

    return wait


async def embed_items(
    provider: EmbeddingProvider,
    items: Sequence[EmbedItem],
    cfg: EmbeddingConfig,
    *,
    on_batch: OnBatch,
    progress: Callable[[int], None] | None = None,
    splitter: Splitter | None = None,
    backoff_initial_s: float = 0.5,
    backoff_max_s: float = 30.0,
) -> EmbedStats:
    """Embed every item; hand each finished batch (keys, raw float32 matrix) to `on_batch`.

    Returns stats; items that failed after all attempts are listed in stats.failed, not raised, so
    the caller can persist what succeeded and exit non-zero.
    """
    spec: ModelSpec = provider.spec
    stats = EmbedStats()
    started = time.perf_counter()
    max_texts = cfg.batch_size or spec.max_batch_texts
    batches = plan_batches(items, max(1, max_texts), spec.max_batch_tokens)
    # A local model is CPU-bound and threads itself: parallel batches would only queue on its lock.
    limit = min(cfg.concurrency, spec.max_concurrency) if spec.max_concurrency else cfg.concurrency
    concurrency = AdaptiveConcurrency(limit)
    rpm = AsyncLimiter(cfg.requests_per_minute, 60) if cfg.requests_per_minute else None
    tpm = AsyncLimiter(cfg.tokens_per_minute, 60) if cfg.tokens_per_minute else None
    wait = _wait(wait_exponential_jitter(multiplier=backoff_initial_s, max=backoff_max_s, jitter=backoff_initial_s))

    async def request(texts: list[str], tokens: int) -> np.ndarray:
        """One API call under the limits, retried; a 413 surfaces as RequestTooLargeError."""
        async for attempt in AsyncRetrying(stop=stop_after_attempt(cfg.max_attempts), wait=wait,
                                           retry=retry_if_exception(_retryable), reraise=True):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    stats.retries += 1
                if rpm:
                    await rpm.acquire()
                if tpm:
                    await tpm.acquire(min(tokens, cfg.tokens_per_minute))
                async with concurrency:
                    stats.requests += 1
                    try:
                        matrix = await provider.embed_batch(texts)
                    except ProviderError as e:
                        stats.errors[type(e).__name__] += 1
                        if isinstance(e, RateLimitError):
                            concurrency.throttled()
                        raise
                if matrix.shape != (len(texts), spec.dimension):
                    stats.errors["BadResponseError"] += 1
                    raise BadResponseError(f"expected {len(texts)} vectors of {spec.dimension} dims, got "
                                           f"shape {tuple(matrix.shape)}", provider=provider.name,
                                           endpoint="embeddings")
                concurrency.succeeded()
                stats.tokens += tokens
                return matrix
        raise AssertionError("unreachable")  # pragma: no cover

    async def embed_long_text(text: str) -> np.ndarray:
        """A text the server refused as too long: embed its pieces, average their unit vectors."""
        if splitter is None or len(text) < 2:
            raise RequestTooLargeError("text too long and no splitter", provider=provider.name)
        stats.split_texts += 1
        pieces = [text[a:b] for a, b in splitter(text)]
        parts = []
        for piece in pieces:
            parts.append((await embed_batch_texts([piece], max(1, len(piece) // 3)))[0])
        stacked = np.stack(parts).astype(np.float32)
        norms = np.linalg.norm(stacked, axis=1, keepdims=True)
        mean = (stacked / np.where(norms > 0, norms, 1)).mean(axis=0)
        scale = float(norms.mean())  # keep the service's typical norm; normalisation happens later
        return (mean / (np.linalg.norm(mean) or 1.0) * scale).astype(np.float32)

    async def embed_batch_texts(texts: list[str], tokens: int) -> np.ndarray:
        try:
            return await request(texts, tokens)
        except RequestTooLargeError:
            if len(texts) == 1:
                return (await embed_long_text(texts[0]))[None, :]
            mid = len(texts) // 2  # maybe only the request was too big: halve the batch
            left = await embed_batch_texts(texts[:mid], tokens // 2)
            right = await embed_batch_texts(texts[mid:], tokens - tokens // 2)
            return np.concatenate([left, right])

    async def run(batch: list[EmbedItem]) -> None:
        keys = [item.key for item in batch]
        try:
            matrix = await embed_batch_texts([item.text for item in batch], sum(i.tokens for i in batch))
        except ProviderError as e:
            for key in keys:
                stats.failed[key] = str(e)
            log.warning("batch of %d texts failed after retries: %s", len(batch), e)
            return
        await on_batch(keys, matrix)
        stats.texts += len(batch)
        if progress:
            progress(len(batch))

    # Bounded fan-out: at most a few batches beyond the concurrency limit are pending at once, so a
    # million-text corpus does not create a million coroutines.
    queue: asyncio.Queue[list[EmbedItem] | None] = asyncio.Queue(maxsize=limit * 2)

    async def worker() -> None:
        while (batch := await queue.get()) is not None:
            await run(batch)

    workers = [asyncio.create_task(worker()) for _ in range(limit)]
    try:
        for batch in batches:
            await queue.put(batch)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
    stats.seconds = time.perf_counter() - started
    return stats
