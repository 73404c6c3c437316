"""Emulator vectors: deterministic, roughly semantic embeddings for the emulated embedders.

Pure numpy over whole batches; knows nothing of HTTP, JSON or load shaping.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Embedder:
    """One emulated embeddings model: its vector size and its per-text token limit."""

    name: str
    dimension: int
    max_input_tokens: int


# Dimensions and limits as in the wire reference (§8).
EMBEDDERS: dict[str, Embedder] = {
    e.name: e
    for e in (
        Embedder("Embeddings", 1024, 512),
        Embedder("Embeddings-2", 1024, 512),
        Embedder("EmbeddingsGigaR", 2560, 4096),
        Embedder("GigaEmbeddings-3B-2025-09", 2048, 4096),
    )
}

# The real service counts about 5 tokens more per embedded text than /tokens/count does (§5.6).
EMBEDDING_TOKEN_OVERHEAD = 5
NORM_MIN, NORM_SPAN = 25.0, 8.0  # real vectors are not unit-norm (≈29 in traces); ours lie in [25, 33)
_NOISE = 0.05  # noise length relative to the unit feature vector: small, so search over vectors still works
_WORD_REPEAT = 3  # a word counts as much as three of its character 3-grams

# Which BMP code points belong to words (letters and digits of any script, and "_", as regex \w).
_WORD_CHAR = np.array([chr(c).isalnum() or c == 0x5F for c in range(0x10000)], dtype=bool)
_U32 = np.uint32
_FNV_PRIME = _U32(0x01000193)
_GOLDEN = _U32(0x9E3779B9)
_TRIGRAM_SALT, _WORD_SALT = 0x27D4EB2F, 0x165667B1


def embedding_tokens(text: str) -> int:
    """The emulator's embeddings token rule: ceil(len(text) / 3) + 5, unlike any real tokenizer on purpose."""
    return math.ceil(len(text) / 3) + EMBEDDING_TOKEN_OVERHEAD


def embed_texts(model: str, texts: Sequence[str]) -> np.ndarray:
    """float32 vectors of `model`'s dimension, one row per text, each row a pure function of (model, text).

    Raises:
        KeyError: `model` is not an emulated embedder.
    """
    dim = EMBEDDERS[model].dimension
    seeds = np.array([_digest64(f"{model}\0{text}") for text in texts], dtype=np.uint64)
    features = _hashed_features(texts, dim, _digest64(model) & 0xFFFFFFFF)
    lengths = np.linalg.norm(features, axis=1, keepdims=True)
    vectors: np.ndarray = np.divide(features, lengths, out=np.zeros_like(features), where=lengths > 0)
    vectors += _noise(seeds, dim)
    # Blake2b's top 24 bits are uniform, so they pick each text's norm directly.
    norms = NORM_MIN + NORM_SPAN * (seeds >> np.uint64(40)).astype(np.float32) / np.float32(2**24)
    vectors *= (norms / np.linalg.norm(vectors, axis=1))[:, None]
    return vectors


def _digest64(text: str) -> int:
    """A stable 64-bit hash of a string (Python's hash() changes between processes)."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finaliser, in place on a uint32 array: every input bit reaches every output bit."""
    h ^= h >> _U32(16)
    h *= _U32(0x85EBCA6B)
    h ^= h >> _U32(13)
    h *= _U32(0xC2B2AE35)
    h ^= h >> _U32(16)
    return h


def _bins(hashes: np.ndarray, size: int) -> np.ndarray:
    """Map uint32 hashes to [0, size) by multiply-shift on their top 16 bits (no slow modulo)."""
    return ((hashes >> _U32(16)) * _U32(size) >> _U32(16)).astype(np.intp)


def _noise(seeds: np.ndarray, dim: int) -> np.ndarray:
    """Per-text float32 noise rows of expected length _NOISE, each derived from its text's seed alone."""
    low = (seeds & np.uint64(0xFFFFFFFF)).astype(_U32)
    high = (seeds >> np.uint64(32)).astype(_U32)
    h = np.arange(dim, dtype=_U32)[None, :] * _GOLDEN + low[:, None]
    h ^= high[:, None]
    uniform = (_fmix32(h) >> _U32(8)).astype(np.float32) * np.float32(2.0**-23) - np.float32(1.0)
    return uniform * np.float32(_NOISE / math.sqrt(dim / 3.0))  # a uniform(-1, 1) lane has variance 1/3


def _hashed_features(texts: Sequence[str], dim: int, model_salt: int) -> np.ndarray:
    """Signed feature hashing of lowercase words and character 3-grams, damped: float32, one row per text.

    The batch is joined into one code-point array so that every step is a whole-array numpy operation
    (a regex over the texts would cost more than all of the hashing).
    """
    n = len(texts)
    padded = [f" {text.lower()} " for text in texts]
    lengths = np.fromiter(map(len, padded), dtype=np.intp, count=n)
    starts = np.cumsum(lengths) - lengths
    raw = np.frombuffer("".join(padded).encode("utf-32-le", "surrogatepass"), dtype=_U32)

    # Normalise each text to " w1 w2 ... wk ": a separator run becomes one space; each text keeps its first space.
    wordy = _WORD_CHAR[np.minimum(raw, _U32(0xFFFF))]
    keep = wordy.copy()
    keep[1:] |= wordy[:-1]
    keep[starts] = True
    codes = raw[keep]
    codes[~wordy[keep]] = 32
    kept = np.add.reduceat(keep, starts, dtype=np.intp)
    row_offsets = np.repeat(np.arange(n, dtype=np.intp) * (2 * dim), kept)

    # Character 3-grams, word-boundary spaces included (FNV-1a style, then mixed).
    trigrams = codes[:-2] * _FNV_PRIME
    trigrams ^= codes[1:-1]
    trigrams *= _FNV_PRIME
    trigrams ^= codes[2:]
    trigrams ^= _U32(_TRIGRAM_SALT ^ model_salt)
    _fmix32(trigrams)

    # A word is identified by the trigrams of " word ", whose hashes a prefix sum adds up in one pass.
    sums = np.zeros(trigrams.size + 1, dtype=_U32)
    np.cumsum(trigrams, dtype=_U32, out=sums[1:])
    spaces = np.flatnonzero(codes == 32)
    start, end = spaces[:-1] + 1, spaces[1:]
    real = end > start  # adjacent spaces only occur where two texts meet
    start, end = start[real], end[real]
    words = sums[end - 1] - sums[start - 1]
    words ^= _U32(_WORD_SALT ^ model_salt)
    _fmix32(words)

    # Bins [0, dim) add and bins [dim, 2*dim) subtract: signed hashing without a sign array.
    word_index = row_offsets[start] + _bins(words, 2 * dim)
    trigram_index = row_offsets[:-2] + _bins(trigrams, 2 * dim)
    text_ends = np.cumsum(kept)
    straddling = np.concatenate((text_ends - 2, text_ends - 1))
    straddling = straddling[(straddling >= 0) & (straddling < trigram_index.size)]
    trigram_index[straddling] = n * 2 * dim  # an extra bin, dropped below
    counts = np.bincount(
        np.concatenate([word_index] * _WORD_REPEAT + [trigram_index]), minlength=n * 2 * dim + 1
    )[:-1].reshape(n, 2, dim)
    signed = (counts[:, 0, :] - counts[:, 1, :]).astype(np.float32)
    damped = np.log1p(np.abs(signed))  # so that a repeated word cannot dominate its text
    damped *= np.sign(signed)
    return damped
