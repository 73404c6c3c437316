"""Search: queries against the live index, to ranked rows and Hits: dense, BM25, or both fused.

Reads a published snapshot and never writes one; the Searcher embeds queries with the index's own model.
Filtered (a boolean mask over rows, from filters.py) and hybrid (dense + BM25 by reciprocal rank fusion).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np
import pyarrow as pa

from .config import Config
from .errors import ModelMismatchError
from .index.bm25 import Bm25Index
from .index.files import load_bm25, load_index
from .index.score import ExactTopK, single_thread
from .providers import embedding_provider
from .providers.retry import RetryPolicy
from .records import Hit
from .store import iter_vector_batches, live_snapshot, normalize_rows

if TYPE_CHECKING:
    from .filters import SearchFilter

__all__ = ["HYBRID_DEPTH", "RRF_K", "Searcher", "hybrid_search", "reciprocal_rank_fusion", "search_ids",
           "search_vectors"]

RRF_K = 60  # the constant of Cormack et al. (2009); ranks past ~60 barely count
EXACT_BATCH_ROWS = 65_536  # vectors per block when searching every vector exactly
EXACT_FILTER_MAX = 20_000  # a filter leaving at most this many rows is searched exactly among them
MAX_EF_SEARCH = 4096
HYBRID_DEPTH = 50  # each list contributes its top max(k, HYBRID_DEPTH) to the fusion


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def _hnsw(index: faiss.Index) -> faiss.IndexHNSW | None:
    inner = faiss.downcast_index(index)
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def _filtered_search(index: faiss.Index, query: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k among allowed rows: exactly when few remain, else with the search parameter scaled by 1/selectivity."""
    count = int(allowed.sum())
    fraction = count / max(1, len(allowed))
    ivf, hnsw = _ivf(index), _hnsw(index)
    if hnsw is not None and count <= EXACT_FILTER_MAX:  # the graph's own vectors, scored exactly
        ids = np.flatnonzero(allowed)
        vectors = index.reconstruct_batch(ids)
        if index.metric_type == faiss.METRIC_INNER_PRODUCT:
            scores = vectors @ query[0]
            order = np.argsort(-scores, kind="stable")[:k]
        else:
            scores = ((vectors - query[0]) ** 2).sum(1)
            order = np.argsort(scores, kind="stable")[:k]
        return scores[order][None, :], ids[order][None, :]
    bits = np.packbits(allowed, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    if ivf is not None:  # with a selector, lists are scanned but only allowed ids are scored
        nprobe = ivf.nlist if count <= EXACT_FILTER_MAX else min(ivf.nlist, math.ceil(ivf.nprobe / fraction))
        params: faiss.SearchParameters = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
    elif hnsw is not None:
        ef = min(MAX_EF_SEARCH, max(k, math.ceil(hnsw.hnsw.efSearch / fraction)))
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
    else:
        params = faiss.SearchParameters(sel=selector)
    scores, ids = index.search(query, k, params=params)
    del bits  # the selector reads this buffer: keep it alive until the search is done
    return scores, ids


def search_ids(index: faiss.Index, query: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
    """(row, score) of the top-k rows for one query vector, best first, within `allowed` (a row mask)."""
    k = max(1, min(k, index.ntotal))
    q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
    with single_thread():
        if allowed is None:
            scores, ids = index.search(q, k)
        elif not allowed.any():
            return []
        else:
            scores, ids = _filtered_search(index, q, min(k, int(allowed.sum())), allowed)
    return [(int(i), float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]


def _hits(rows: pa.Table, found: Sequence[tuple[int, float]]) -> list[Hit]:
    if not found:
        return []
    picked = rows.take(pa.array([i for i, _ in found], pa.int64())).to_pylist()
    return [
        Hit(rank=rank, score=score, chunk_id=row["chunk_id"], doc_id=row["doc_id"],
            source_path=row["source_path"], chunk_index=row["chunk_index"], char_start=row["char_start"],
            char_end=row["char_end"], text=row["text"], metadata=json.loads(row["metadata"] or "{}"))
        for rank, ((_, score), row) in enumerate(zip(found, picked, strict=True), 1)
    ]


def search_vectors(index: faiss.Index, rows: pa.Table, query: np.ndarray, k: int, *,
                   allowed: np.ndarray | None = None) -> list[Hit]:
    """Top-k hits for one query vector (already normalised like the index's vectors), within `allowed`."""
    return _hits(rows, search_ids(index, query, k, allowed))


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Items of several best-first rankings, ordered by sum of 1 / (k + rank) (rank from 1); ties keep first-seen order."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: -kv[1])


def fused_ids(index: faiss.Index, bm25: Bm25Index, query: np.ndarray, query_text: str, depth: int,
              allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
    """(row, fused score) of the dense and BM25 top-`depth` lists, fused by reciprocal rank, best first."""
    dense = [i for i, _ in search_ids(index, query, depth, allowed)]
    lexical = [i for i, _ in bm25.top(query_text, depth, allowed)]
    return reciprocal_rank_fusion([dense, lexical], RRF_K)


def hybrid_search(index: faiss.Index, rows: pa.Table, bm25: Bm25Index, query: np.ndarray, query_text: str, k: int,
                  *, allowed: np.ndarray | None = None, depth: int = HYBRID_DEPTH) -> list[Hit]:
    """Dense and BM25 top lists fused by reciprocal rank (k=60); a Hit's score is its fused score."""
    return _hits(rows, fused_ids(index, bm25, query, query_text, max(k, depth), allowed)[:k])


class Searcher:
    """The live index with the provider of its model, to embed queries the same way its passages were.

    Raises ModelMismatchError when `model` is not the index's, StoreError when nothing is indexed yet.
    """

    def __init__(self, config: Config, model: str | None = None) -> None:
        self.snap = live_snapshot(config.out_dir)
        self.index, self.rows, self.meta = load_index(self.snap)
        indexed = self.meta.get("fingerprint", {})
        name = indexed.get("model", "")
        if model and model != name:
            raise ModelMismatchError(f"{config.out_dir} was built with model {name!r}; a query embedded with "
                                     f"{model!r} would not be comparable. Search it without --model, or "
                                     f"embed again with --model {model} --out another directory")
        self.spec = config.model_spec(name)
        if self.spec.dimension != indexed.get("dimension") or self.index.d != self.spec.dimension:
            raise ModelMismatchError(f"{config.out_dir}: index dimension {self.index.d} does not match model "
                                     f"{name} ({self.spec.dimension})")
        self.config = config
        self._bm25: Bm25Index | None = None

    @property
    def bm25(self) -> Bm25Index:
        """The index's BM25 index, loaded on first use. Raises StoreError when it was built without one."""
        if self._bm25 is None:
            self._bm25 = load_bm25(self.snap.index_dir)
        return self._bm25

    def embed(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        """Vectors of texts by the index's model, normalised as its passages were."""
        async def run() -> np.ndarray:
            provider = embedding_provider(self.spec, self.config)
            try:  # one 500 must not fail a user's search: retried like every one-off call
                return await RetryPolicy.for_config(self.config).acall(
                    lambda: provider.embed_batch(texts, is_query=is_query))
            finally:
                await provider.aclose()

        matrix = np.array(asyncio.run(run()), dtype=np.float32)
        return normalize_rows(matrix) if self.spec.normalize else matrix

    def dense(self, vector: np.ndarray, n: int) -> list[int]:
        """Rows of the index's top n for one query vector, best first."""
        return [i for i, _ in search_ids(self.index, vector, n)]

    def exact(self, vectors: np.ndarray, n: int) -> list[list[int]]:
        """Rows of the exact top n for each query vector, over every vector of the snapshot (the truth for ANN)."""
        metric = self.index.metric_type
        top = ExactTopK(vectors, min(n, self.index.ntotal), metric)
        for block in iter_vector_batches(self.snap.vectors_path, EXACT_BATCH_ROWS):
            top.add(block)
        return [[int(i) for i in row if i >= 0] for row in top.ids]

    def lexical(self, query: str, n: int) -> list[int]:
        """Rows of the BM25 top n for a query text, best first."""
        return [i for i, _ in self.bm25.top(query, n)]

    def fused(self, query: str, vector: np.ndarray, n: int) -> list[int]:
        """Rows of the dense and BM25 top-n lists fused by reciprocal rank, best first (up to 2n)."""
        return [i for i, _ in fused_ids(self.index, self.bm25, vector, query, n)]

    def hits(self, query: str, vector: np.ndarray, k: int, filters: SearchFilter | None = None,
             hybrid: bool = False) -> list[Hit]:
        """Top-k hits within the filters: dense, or dense + BM25 fused by reciprocal rank (hybrid)."""
        allowed = filters.mask(self.rows) if filters else None
        if hybrid:
            return hybrid_search(self.index, self.rows, self.bm25, vector, query, k, allowed=allowed)
        return search_vectors(self.index, self.rows, vector, k, allowed=allowed)
