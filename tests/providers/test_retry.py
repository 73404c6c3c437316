"""The one-off call retry policy: bounded attempts, Retry-After honoured up to a cap, a deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.errors import AuthError, RateLimitError, ServerError
from pipeline.providers.retry import RetryPolicy, usable_retry_after

FAST = RetryPolicy(initial_wait_s=0.001, max_wait_s=0.002)


def failing(errors: list[Exception], result: str = "ok"):
    calls: list[float] = []

    def fn() -> str:
        calls.append(time.monotonic())
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


def test_a_transient_500_is_retried() -> None:
    fn, calls = failing([ServerError("boom", status=500)])
    assert FAST.call(fn) == "ok"
    assert len(calls) == 2


def test_attempts_are_bounded() -> None:
    fn, calls = failing([ServerError("boom", status=500) for _ in range(10)])
    with pytest.raises(ServerError):
        FAST.call(fn)
    assert len(calls) == FAST.max_attempts


def test_a_permanent_error_is_not_retried() -> None:
    fn, calls = failing([AuthError("no", status=401)])
    with pytest.raises(AuthError):
        FAST.call(fn)
    assert len(calls) == 1


def test_retry_after_is_honoured_below_the_cap() -> None:
    fn, calls = failing([RateLimitError("slow down", status=429, retry_after=0.2)])
    assert FAST.call(fn) == "ok"
    assert calls[1] - calls[0] >= 0.19


@pytest.mark.parametrize("asked", [float("inf"), 86400.0, 301.0])
def test_retry_after_over_the_cap_fails_at_once_and_says_why(asked: float) -> None:
    fn, calls = failing([RateLimitError("slow down", status=429, retry_after=asked)])
    started = time.monotonic()
    with pytest.raises(RateLimitError, match="cap") as info:
        FAST.call(fn)
    assert time.monotonic() - started < 1.0
    assert len(calls) == 1
    assert info.value.retryable  # a later run may well get through


def test_429s_that_say_when_are_waited_out_not_counted_as_failed_attempts() -> None:
    # Eight callers on one key collide; spending the 4 attempts on 429s failed 8 concurrent searches.
    fn, calls = failing([RateLimitError("busy", status=429, retry_after=0.01) for _ in range(10)])
    assert FAST.call(fn) == "ok"
    assert len(calls) == 11


def test_429_waits_are_bounded_too() -> None:
    policy = RetryPolicy(initial_wait_s=0.001, max_wait_s=0.002, max_rate_limited_waits=5)
    fn, calls = failing([RateLimitError("busy", status=429, retry_after=0.01) for _ in range(50)])
    with pytest.raises(RateLimitError):
        policy.call(fn)
    assert len(calls) == 6


def test_callers_told_the_same_retry_after_come_back_spread() -> None:
    waits = []
    for _ in range(20):
        fn, calls = failing([RateLimitError("busy", status=429, retry_after=0.05)])
        FAST.call(fn)
        waits.append(calls[1] - calls[0])
    assert min(waits) >= 0.049
    assert max(waits) - min(waits) > 0.01


def test_the_deadline_bounds_the_whole_call() -> None:
    policy = RetryPolicy(max_attempts=100, initial_wait_s=0.05, max_wait_s=0.05, deadline_s=0.3)
    fn, calls = failing([ServerError("boom", status=500) for _ in range(100)])
    started = time.monotonic()
    with pytest.raises(ServerError):
        policy.call(fn)
    assert time.monotonic() - started < 0.5
    assert 2 <= len(calls) < 100


def test_async_calls_share_the_policy() -> None:
    errors = [ServerError("boom", status=500), RateLimitError("x", status=429, retry_after=None)]

    async def fn() -> int:
        if errors:
            raise errors.pop(0)
        return 7

    assert asyncio.run(FAST.acall(fn)) == 7
    assert errors == []


@pytest.mark.parametrize(("asked", "usable"), [(None, None), (float("inf"), None), (float("nan"), None),
                                               (5.0, 5.0), (-1.0, 0.0), (300.0, 300.0), (300.5, None)])
def test_usable_retry_after(asked: float | None, usable: float | None) -> None:
    assert usable_retry_after(asked, 300.0) == usable
