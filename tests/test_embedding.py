import asyncio

import numpy as np
import pytest
from fakes import FakeProvider

from pipeline.config import EmbeddingConfig
from pipeline.embedding import AdaptiveConcurrency, EmbedItem, embed_items, plan_batches
from pipeline.errors import AuthError, RateLimitError, RequestTooLargeError, ServerError
from pipeline.records import ModelSpec

FAST = {"backoff_initial_s": 0.001, "backoff_max_s": 0.01}


def _items(n: int) -> list[EmbedItem]:
    return [EmbedItem(key=f"k{i}", text=f"text number {i}", tokens=5 + i % 3) for i in range(n)]


def _run(provider: FakeProvider, items: list[EmbedItem], cfg: EmbeddingConfig | None = None, **kw):
    got: dict[str, np.ndarray] = {}

    async def on_batch(keys: list[str], matrix: np.ndarray) -> None:
        for k, row in zip(keys, matrix, strict=True):
            assert k not in got, f"{k} delivered twice"
            got[k] = row

    stats = asyncio.run(embed_items(provider, items, cfg or EmbeddingConfig(), on_batch=on_batch, **FAST, **kw))
    return stats, got


def test_plan_batches_respects_texts_and_tokens() -> None:
    items = _items(10)
    assert [len(b) for b in plan_batches(items, 4)] == [4, 4, 2]
    by_tokens = plan_batches(items, 100, max_tokens=12)
    assert all(sum(i.tokens for i in b) <= 12 for b in by_tokens)
    assert [i.key for b in by_tokens for i in b] == [i.key for i in items]


def test_every_item_gets_its_own_vector_once(fake_spec: ModelSpec) -> None:
    provider = FakeProvider(fake_spec)
    stats, got = _run(provider, _items(23))
    assert set(got) == {f"k{i}" for i in range(23)}
    for i in range(23):
        np.testing.assert_array_equal(got[f"k{i}"], FakeProvider.vector_for(f"text number {i}", 8))
    assert max(len(b) for b in provider.batches) == 4  # the model's max_batch_texts
    assert stats.texts == 23 and stats.requests == 6 and not stats.failed


def test_batch_size_override(fake_spec: ModelSpec) -> None:
    provider = FakeProvider(fake_spec)
    _run(provider, _items(9), EmbeddingConfig(batch_size=2))
    assert max(len(b) for b in provider.batches) == 2


@pytest.mark.parametrize("error", [ServerError, RateLimitError])
def test_retryable_errors_are_retried(fake_spec: ModelSpec, error: type) -> None:
    provider = FakeProvider(fake_spec, fail_times=3, error=error)
    stats, got = _run(provider, _items(8), EmbeddingConfig(max_attempts=5))
    assert len(got) == 8 and stats.retries == 3 and not stats.failed


def test_non_retryable_error_fails_the_batch_without_retry(fake_spec: ModelSpec) -> None:
    provider = FakeProvider(fake_spec, fail_text="number 5", error=AuthError)
    stats, got = _run(provider, _items(8), EmbeddingConfig(concurrency=1))
    assert set(stats.failed) == {"k4", "k5", "k6", "k7"}
    assert set(got) == {"k0", "k1", "k2", "k3"}
    assert stats.retries == 0


def test_exhausted_attempts_record_failure_with_reason(fake_spec: ModelSpec) -> None:
    provider = FakeProvider(fake_spec, fail_text="number 1", error=ServerError)
    stats, got = _run(provider, _items(3), EmbeddingConfig(max_attempts=3))
    assert set(stats.failed) == {"k0", "k1", "k2"}
    assert "always fails" in stats.failed["k1"]
    assert len(provider.batches) == 3 and not got


def test_too_large_batch_is_halved_then_long_text_split(fake_spec: ModelSpec) -> None:
    class Picky(FakeProvider):
        async def embed_batch(self, texts, *, is_query=False):
            if len(texts) > 1 and any("long" in t for t in texts) or any(len(t) > 20 for t in texts):
                self.batches.append(list(texts))
                raise RequestTooLargeError("too long", provider="fake")
            return await super().embed_batch(texts)

    items = [EmbedItem("a", "short", 2), EmbedItem("b", "long " * 8, 20), EmbedItem("c", "tiny", 2)]
    halves = lambda t: [(0, len(t) // 2), (len(t) // 2, len(t))]  # noqa: E731
    stats, got = _run(Picky(fake_spec), items, splitter=halves)
    assert set(got) == {"a", "b", "c"} and stats.split_texts >= 1 and not stats.failed
    assert got["b"].shape == (8,)


def test_wrong_shape_from_provider_is_an_error_not_a_row(fake_spec: ModelSpec) -> None:
    class Short(FakeProvider):
        async def embed_batch(self, texts, *, is_query=False):
            return (await super().embed_batch(texts))[:-1]

    stats, got = _run(Short(fake_spec), _items(4), EmbeddingConfig(max_attempts=2))
    assert not got and len(stats.failed) == 4 and stats.errors["BadResponseError"] == 2


def test_adaptive_concurrency_shrinks_and_grows() -> None:
    async def go() -> None:
        limiter = AdaptiveConcurrency(8, grow_after=2)
        limiter.throttled()
        assert limiter.limit == 4
        limiter.throttled()
        limiter.throttled()
        limiter.throttled()
        assert limiter.limit == 1
        for _ in range(4):
            limiter.succeeded()
        assert limiter.limit == 3
        async with limiter:
            assert limiter.in_flight == 1

    asyncio.run(go())


def test_in_flight_never_exceeds_concurrency(fake_spec: ModelSpec) -> None:
    peak = 0
    current = 0

    class Slow(FakeProvider):
        async def embed_batch(self, texts, *, is_query=False):
            nonlocal peak, current
            current += 1
            peak = max(peak, current)
            await asyncio.sleep(0.005)
            current -= 1
            return await super().embed_batch(texts)

    _run(Slow(fake_spec), _items(60), EmbeddingConfig(concurrency=3))
    assert peak == 3
