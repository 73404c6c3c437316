"""The batch sizer's growth, pure: trials up while the rate binds, the 413 bracket, the ceilings."""

from __future__ import annotations

import pytest

from pipeline.ratelimit import MAX_BATCH_TEXTS, BatchSizer, batch_ceiling


def _drive(sizer: BatchSizer, cap: int, rounds: int = 60, *, rate_bound: bool = True) -> list[int]:
    """Serve a server taking at most `cap` texts: each round sends a trial if one is due, else the limit."""
    refused = []
    for _ in range(rounds):
        size = sizer.trial = sizer.next_trial(rate_bound)
        size = size or sizer.limit
        if size > cap:
            sizer.too_large(size)
            refused.append(size)
        else:
            sizer.succeeded(size)
    return refused


@pytest.mark.parametrize(("start", "cap", "max_refusals"), [
    (50, 100, 4), (50, 60, 3), (50, 64, 4), (100, 128, 5), (50, 1000, 0), (20, 37, 4), (8, 9, 2),
])
def test_grows_to_the_servers_cap_and_settles(start: int, cap: int, max_refusals: int) -> None:
    sizer = BatchSizer(start, ceiling=1000)
    refused = _drive(sizer, cap)
    assert sizer.limit == min(cap, 1000) and sizer.next_trial(True) == 0  # settled: nothing more to test
    assert len(refused) <= max_refusals and len(set(refused)) == len(refused)  # no size refused twice
    assert not _drive(sizer, cap, 200)  # no oscillation: not one more 413


def test_no_growth_unless_the_rate_binds_nor_past_the_ceiling() -> None:
    sizer = BatchSizer(50, ceiling=300)
    _drive(sizer, 10_000, rate_bound=False)
    assert sizer.limit == 50
    _drive(sizer, 10_000)
    assert sizer.limit == 300


def test_only_from_a_proven_size_and_one_trial_at_a_time() -> None:
    sizer = BatchSizer(50, ceiling=1000)
    assert sizer.next_trial(True) == 0  # 50 not yet taken by the server
    sizer.succeeded(50)
    assert sizer.next_trial(True) == 100
    sizer.trial = 100
    assert sizer.next_trial(True) == 0
    sizer.succeeded(50)  # the others keep to the limit meanwhile
    assert sizer.limit == 50
    sizer.abandon(100)  # the trial failed for another reason (a 500 after all attempts)
    assert sizer.next_trial(True) == 100


def test_a_fixed_size_never_grows() -> None:
    sizer = BatchSizer(50)  # ceiling 0: the start is the ceiling
    assert not _drive(sizer, 10_000) and sizer.limit == 50


def test_a_trial_refusal_keeps_the_proven_limit() -> None:
    sizer = BatchSizer(100, ceiling=1000)
    sizer.succeeded(100)
    sizer.trial = sizer.next_trial(True)
    sizer.too_large(200)
    assert (sizer.limit, sizer.good, sizer.bad, sizer.trial, sizer.probing) == (100, 100, 200, 0, False)
    assert sizer.next_trial(False) == 125  # within the bracket: no rate limit needed to finish the search


@pytest.mark.parametrize(("dimension", "max_input_tokens", "max_batch_tokens", "start", "want"), [
    (1024, 512, 0, 100, 976), (2560, 4096, 0, 50, 390), (384, 512, 0, 32, MAX_BATCH_TEXTS),
    (1024, 512, 16_384, 100, 100), (1024, 512, 100_000, 100, 195), (2560, 4096, 0, 500, 500),
])
def test_batch_ceiling(dimension: int, max_input_tokens: int, max_batch_tokens: int, start: int, want: int) -> None:
    assert batch_ceiling(start, dimension, max_input_tokens, max_batch_tokens) == want
