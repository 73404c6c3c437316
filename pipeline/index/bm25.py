"""BM25: the lexical index of chunk texts (bm25s), built beside the FAISS index for hybrid search.

Knows tokens and scores only: no FAISS, no fusion (search.py), no file names (files.py saves and loads it).
Tokenisation is for Russian and English together: lower-cased word runs, stop words dropped, each word
stemmed by the Snowball stemmer of its script.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["TOKENIZER", "Bm25Index", "tokenize"]

_WORD = re.compile(r"[^\W_]+")  # letters and digits; `_`, `.` and `/` split identifiers and paths
_CYRILLIC = re.compile(r"[а-яё]")
_LATIN = re.compile(r"[a-z]")
TOKENIZER = "stem-en-ru-v1"  # bump when tokenize() changes: saved indexes then ask to be rebuilt


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS, STOPWORDS_RUSSIAN

    return frozenset(STOPWORDS_EN_PLUS) | frozenset(w.replace("ё", "е") for w in STOPWORDS_RUSSIAN)


@lru_cache(maxsize=1)
def _stemmers() -> tuple[object, object]:
    import Stemmer  # PyStemmer: the Snowball stemmers, in C

    return Stemmer.Stemmer("english"), Stemmer.Stemmer("russian")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    english, russian = _stemmers()
    if _CYRILLIC.search(word):
        return russian.stemWord(word)  # type: ignore[attr-defined]
    if _LATIN.search(word):
        return english.stemWord(word)  # type: ignore[attr-defined]
    return word  # numbers, other scripts: as they are


def tokenize(text: str) -> list[str]:
    """Stemmed, lower-cased words of text without stop words: 'Хлеба пекут' -> ['хлеб', 'пекут']."""
    stop = _stopwords()
    return [_stem(w) for w in _WORD.findall(text.lower().replace("ё", "е")) if w not in stop]


class Bm25Index:
    """BM25 scores of every chunk (row order = FAISS ids) for every term, as bm25s keeps them (sparse)."""

    def __init__(self, retriever: object, num_docs: int) -> None:
        self._retriever = retriever
        self.num_docs = num_docs

    @classmethod
    def build(cls, texts: Iterable[str]) -> Bm25Index:
        """Index texts (one per chunk, in row order); token ids are assigned as texts stream past."""
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its own logger to DEBUG

        vocab: dict[str, int] = {}
        ids: list[np.ndarray] = []
        for text in texts:
            tokens = tokenize(text or "")
            ids.append(np.fromiter((vocab.setdefault(t, len(vocab)) for t in tokens), np.int32, len(tokens)))
        retriever = bm25s.BM25()
        if ids:
            vocab.setdefault("", len(vocab))  # bm25s scores documents with no tokens through an empty token
            retriever.index((ids, vocab), create_empty_token=False, show_progress=False)
        return cls(retriever, len(ids))

    def save(self, path: Path) -> None:
        """The bm25s files into the folder `path` (nothing for an empty index); files.save_bm25 adds the rest."""
        path.mkdir(parents=True, exist_ok=True)
        if self.num_docs:
            self._retriever.save(str(path), show_progress=False)  # type: ignore[attr-defined]

    @classmethod
    def open(cls, path: Path, num_docs: int) -> Bm25Index:
        """The index save() wrote to `path`, memory-mapped."""
        import bm25s

        retriever = bm25s.BM25.load(str(path), mmap=True, show_progress=False) if num_docs else None
        return cls(retriever, num_docs)

    def top(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(row, score) of the k best-scoring chunks with a positive score, best first, within `allowed`."""
        if not self.num_docs or k <= 0:
            return []
        retriever = self._retriever
        token_ids = retriever.get_tokens_ids(tokenize(query))  # type: ignore[attr-defined]
        if not token_ids:
            return []
        scores = np.asarray(retriever.get_scores_from_ids(token_ids), dtype=np.float32)  # type: ignore[attr-defined]
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        k = min(k, len(scores))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(int(i), float(scores[i])) for i in best if scores[i] > 0]

