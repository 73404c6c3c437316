"""Search: a query vector against a loaded index, to ranked Hits with their source rows.

Filtered (a boolean mask over rows, from filters.py) and hybrid (dense + BM25 fused by reciprocal rank,
from hybrid.py). Sync and pure over (index, rows); embedding the query happens in api.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import faiss
import numpy as np
import pyarrow as pa

from .hybrid import RRF_K, reciprocal_rank_fusion
from .index.score import single_thread
from .records import Hit

__all__ = ["HYBRID_DEPTH", "hybrid_search", "search_ids", "search_vectors"]

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


def hybrid_search(index: faiss.Index, rows: pa.Table, bm25: object, query: np.ndarray, query_text: str, k: int,
                  *, allowed: np.ndarray | None = None, depth: int = HYBRID_DEPTH) -> list[Hit]:
    """Dense and BM25 top lists fused by reciprocal rank (k=60); a Hit's score is its fused score."""
    n = max(k, depth)
    dense = [i for i, _ in search_ids(index, query, n, allowed)]
    lexical = [i for i, _ in bm25.top(query_text, n, allowed)]  # type: ignore[attr-defined]
    return _hits(rows, reciprocal_rank_fusion([dense, lexical], RRF_K)[:k])
