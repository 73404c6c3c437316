import asyncio
from itertools import pairwise

import numpy as np
import pytest
from fakes import FakeProvider

from pipeline.config import EmbeddingConfig
from pipeline.embedding import (
    ABORT_AFTER_FAILED_BATCHES,
    EmbedItem,
    embed_items,
    plan_batches,
)
from pipeline.errors import AuthError, RateLimitError, RequestTooLargeError, ServerError
from pipeline.inflight import AdaptiveConcurrency
from pipeline.planning import estimate_time
from pipeline.ratelimit import BatchSizer, RequestPacer
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
        async def embed_batch(self, texts, *, is_query=False, on_received=None):
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
        async def embed_batch(self, texts, *, is_query=False, on_received=None):
            return (await super().embed_batch(texts))[:-1]

    stats, got = _run(Short(fake_spec), _items(4), EmbeddingConfig(max_attempts=2))
    assert not got and len(stats.failed) == 4 and stats.errors["BadResponseError"] == 2


def test_adaptive_concurrency_shrinks_and_grows() -> None:
    async def go() -> None:
        limiter = AdaptiveConcurrency(8, grow_after=2)
        limiter.throttled()
        assert limiter.limit == 7  # one refusal costs one slot
        for _ in range(10):
            limiter.throttled()
        assert limiter.limit == 1
        for _ in range(4):
            limiter.succeeded()
        assert limiter.limit == 3
        for _ in range(100):
            limiter.succeeded()
        assert limiter.limit == 8
        slot = await limiter.acquire()
        assert limiter.in_flight == 1
        slot.release()
        slot.release()  # released once, however many times it is called
        assert limiter.in_flight == 0

    asyncio.run(go())


def test_in_flight_never_exceeds_concurrency(fake_spec: ModelSpec) -> None:
    peak = 0
    current = 0

    class Slow(FakeProvider):
        async def embed_batch(self, texts, *, is_query=False, on_received=None):
            nonlocal peak, current
            current += 1
            peak = max(peak, current)
            await asyncio.sleep(0.005)
            current -= 1
            return await super().embed_batch(texts)

    _run(Slow(fake_spec), _items(60), EmbeddingConfig(concurrency=3))
    assert peak == 3


def test_slot_is_freed_when_the_response_arrives_not_after_decoding(fake_spec: ModelSpec) -> None:
    at_server = peak_server = decoding = peak_total = 0

    class SlowDecode(FakeProvider):
        async def embed_batch(self, texts, *, is_query=False, on_received=None):
            nonlocal at_server, peak_server, decoding, peak_total
            at_server += 1
            peak_server = max(peak_server, at_server)
            peak_total = max(peak_total, at_server + decoding)
            await asyncio.sleep(0.005)  # the server's latency
            at_server -= 1
            decoding += 1
            on_received()
            await asyncio.sleep(0.01)  # decoding a big body, in a thread: the server is not involved
            decoding -= 1
            return await super().embed_batch(texts)

    stats, got = _run(SlowDecode(fake_spec), _items(80), EmbeddingConfig(concurrency=3, batch_size=2))
    assert len(got) == 80 and not stats.failed
    assert peak_server == 3  # never more than the limit at the server...
    assert peak_total > 3  # ...while earlier responses were still being decoded



def _attempt_times(provider_cls, fake_spec: ModelSpec, items: list[EmbedItem], cfg: EmbeddingConfig,
                   initial_s: float) -> tuple[dict[str, list[float]], object]:
    times: dict[str, list[float]] = {}

    class Timed(provider_cls):
        async def embed_batch(self, texts, *, is_query=False, on_received=None):
            times.setdefault(texts[0], []).append(asyncio.get_running_loop().time())
            return await super().embed_batch(texts)

    async def on_batch(keys, matrix):
        return None

    stats = asyncio.run(embed_items(Timed(fake_spec), items, cfg, on_batch=on_batch,
                                    backoff_initial_s=initial_s, backoff_max_s=10.0))
    return times, stats


def test_a_failing_server_is_backed_off_exponentially(fake_spec: ModelSpec) -> None:
    class Down(FakeProvider):
        async def embed_batch(self, texts, *, is_query=False, on_received=None):
            raise ServerError("down", provider="fake")

    times, stats = _attempt_times(Down, fake_spec, _items(1), EmbeddingConfig(max_attempts=5), 0.02)
    calls = times["text number 0"]
    gaps = [b - a for a, b in pairwise(calls)]
    assert len(calls) == 5 and stats.failed
    assert gaps[0] <= 0.03 + 0.02  # 0.02 x 0.5..1.5 (+ scheduling)
    assert gaps[3] >= 0.16 * 0.5  # the fourth wait of an unbroken streak: 8x the first


def test_an_isolated_failure_is_retried_soon_whatever_the_batch_went_through(fake_spec: ModelSpec) -> None:
    # One batch fails 4 times while the others succeed: each of its waits starts from the shortest,
    # because the server keeps answering; a per-batch exponential would wait 8x at the fourth.
    class Unlucky(FakeProvider):
        failures = 0

        async def embed_batch(self, texts, *, is_query=False, on_received=None):
            await asyncio.sleep(0.02)
            if texts[0] == "text number 0" and Unlucky.failures < 4:
                Unlucky.failures += 1
                raise ServerError("bad luck", provider="fake")
            return await super().embed_batch(texts)

    cfg = EmbeddingConfig(max_attempts=6, concurrency=1, batch_size=1)
    times, stats = _attempt_times(Unlucky, fake_spec, _items(40), cfg, 0.1)
    calls = times["text number 0"]
    gaps = [b - a for a, b in pairwise(calls)]
    assert len(calls) == 5 and not stats.failed
    # 0.02 s of its own call + at most 0.15 s of wait + one other call ahead of it in the slot
    assert max(gaps) < 0.02 + 0.15 + 0.02 + 0.05, gaps


def test_a_long_run_of_429s_without_retry_after_is_waited_out(fake_spec: ModelSpec) -> None:
    # "Too many concurrent requests" with no Retry-After for 1 s: every refusal lengthens the wait, so a
    # batch's 10 allowed 429s (max_attempts 2 x 5) span the storm instead of being spent in half a second.
    class Storm(FakeProvider):
        until = 0.0

        async def embed_batch(self, texts, *, is_query=False, on_received=None):
            now = asyncio.get_running_loop().time()
            Storm.until = Storm.until or now + 1.0
            if now < Storm.until:
                raise RateLimitError("too many concurrent requests", provider="fake", retry_after=None)
            return await super().embed_batch(texts)

    times, stats = _attempt_times(Storm, fake_spec, _items(2), EmbeddingConfig(max_attempts=2, concurrency=1), 0.02)
    assert not stats.failed and stats.texts == 2
    assert stats.rate_limited <= 10

def test_a_retry_takes_the_next_free_slot_before_fresh_batches() -> None:
    async def go() -> list[str]:
        limiter = AdaptiveConcurrency(1)
        held = await limiter.acquire()
        order: list[str] = []

        async def take(name: str, first: bool) -> None:
            slot = await limiter.acquire(first=first)
            order.append(name)
            slot.release()

        tasks = [asyncio.create_task(take("fresh-1", False)), asyncio.create_task(take("fresh-2", False))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(take("retry", True)))
        await asyncio.sleep(0)
        held.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(go())[0] == "retry"


def test_a_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    async def go() -> int:
        limiter = AdaptiveConcurrency(1)
        held = await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        held.release()  # handed to the waiter...
        waiter.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return limiter.in_flight

    assert asyncio.run(go()) == 0

# -- the scheduler's policies (pure) and its feed

def test_batch_sizer_finds_the_server_cap_by_binary_search() -> None:
    sizer = BatchSizer(100)
    cap, refusals = 20, 0
    for _ in range(20):
        size = sizer.trial = sizer.next_trial(rate_bound=False)  # the search up from 12 needs no rate limit
        size = size or sizer.limit
        if size > cap:
            sizer.too_large(size)
            refusals += 1
        else:
            sizer.succeeded(size)
    assert sizer.limit == cap and refusals <= 4 and not sizer.probing and not sizer.next_trial(rate_bound=True)
    sizer.too_large(100)  # a late answer to a batch cut before the lesson: nothing new
    assert sizer.limit == cap
    sizer.too_large(12)  # refused below a size that passed: one long text did it; evidence reset
    assert sizer.good == 0 and sizer.limit == 6
    sizer.reset()
    assert sizer.limit == 100


def test_pacer_learns_the_rate_from_429s_and_honours_retry_after() -> None:
    pacer = RequestPacer()
    now = 0.0
    for i in range(30):  # unpaced: 30 requests in the first second
        assert pacer.delay(now + i / 30) == 0.0
    pacer.rate_limited(1.0, retry_after=0.5, sent_at=0.99)
    assert pacer.rate == pytest.approx(30 * 0.9, rel=0.05)  # the pace just seen, minus 10 %
    assert pacer.delay(1.2) == pytest.approx(0.3)  # the gate: nobody before 1.5 s
    assert pacer.delay(1.5) == 0.0 and pacer.delay(1.5) > 0  # then one at a time, 1/rate apart
    rate = pacer.rate
    pacer.rate_limited(1.6, retry_after=0.05, sent_at=0.9)  # sent before the decrease: no second cut
    assert pacer.rate == rate
    pacer.rate_limited(1.7, retry_after=0.05, sent_at=1.65)
    assert pacer.rate == pytest.approx(rate * 0.9)
    for _ in range(50):
        pacer.succeeded()
    assert pacer.rate == pytest.approx(rate * 0.9 + 1.0)


def test_pacer_with_a_configured_rate_spaces_requests() -> None:
    pacer = RequestPacer(max_rate=10.0)
    assert pacer.delay(0.0) == 0.0
    assert pacer.delay(0.0) == pytest.approx(0.1)
    assert pacer.delay(0.1) == 0.0
    pacer.succeeded()
    assert pacer.rate == 10.0  # never above what is configured


def test_a_lazy_feed_is_embedded_while_it_is_produced(fake_spec: ModelSpec) -> None:
    produced: list[int] = []

    def items():
        for i in range(50):
            produced.append(i)
            yield EmbedItem(f"k{i}", f"text number {i}", 5)

    provider = FakeProvider(fake_spec)
    stats, got = _run(provider, items())
    assert set(got) == {f"k{i}" for i in range(50)} and stats.texts == 50 and len(produced) == 50
    assert max(len(b) for b in provider.batches) == 4


def test_requests_respect_the_token_bound(fake_spec: ModelSpec) -> None:
    spec = ModelSpec(**{**fake_spec.__dict__, "max_batch_tokens": 12})
    provider = FakeProvider(spec)
    _run(provider, _items(20))
    assert all(sum(5 + int(t.split()[-1]) % 3 for t in b) <= 12 for b in provider.batches)


def test_a_run_of_failed_batches_stops_spending(fake_spec: ModelSpec) -> None:
    provider = FakeProvider(fake_spec, fail_text="text", error=ServerError)
    stats, got = _run(provider, _items(200), EmbeddingConfig(max_attempts=2, concurrency=1))
    assert not got and len(stats.failed) == 200 and stats.aborted
    # five batches tried twice (the spare worker may have started a sixth); the other 44 never sent
    assert len(provider.batches) <= 2 * ABORT_AFTER_FAILED_BATCHES + 2


def test_estimate_time_names_the_binding_limit() -> None:
    est = estimate_time(100, 50_000, concurrency=8, latency_s=0.35)
    assert est.binding == "in-flight limit" and est.seconds == pytest.approx(13 * 0.35)
    est = estimate_time(100, 50_000, concurrency=8, latency_s=0.35, requests_per_minute=600)
    assert est.binding == "requests_per_minute" and est.seconds == pytest.approx(99 / 10 + 0.35)
    est = estimate_time(100, 50_000, concurrency=8, latency_s=0.35, requests_per_minute=600,
                        tokens_per_minute=60_000)
    assert est.binding == "tokens_per_minute" and est.seconds == pytest.approx(99 / 2 + 0.35)
