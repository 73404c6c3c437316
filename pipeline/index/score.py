"""Index scoring: recall@k against exact search, single-query latency, and tuning the search parameter.

Sync and in-memory over a built FAISS index and sample queries; reads no files (build.py streams the truth in).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np

from .select import IndexChoice

__all__ = ["ExactTopK", "drop_self", "latency_ms", "recall_at_k", "set_search_param", "single_thread", "tune_search_param"]

# Values tried, smallest first: the first that reaches the target recall wins.
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One OpenMP thread for single-query searches: on a loaded machine a thread team costs ~10x the query."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def set_search_param(index: faiss.Index, params: dict[str, int]) -> None:
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


class ExactTopK:
    """Exact top-k ids of fixed queries, merged block by block as the database streams past.

    `offset`: the id of the first row added (a shard of the database starts past row 0); `merge` folds in
    another part's top-k, so the parts of a sharded build give the top-k of the whole.
    """

    def __init__(self, queries: np.ndarray, k: int, metric: int, offset: int = 0) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.metric = metric
        self._sign = -1.0 if metric == faiss.METRIC_INNER_PRODUCT else 1.0  # sort ascending on sign * score
        self.scores = np.full((len(queries), k), np.inf, dtype=np.float32)  # sign * score
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)
        self._offset = offset

    def add(self, block: np.ndarray) -> None:
        if len(self.queries) and len(block):
            d, i = faiss.knn(self.queries, np.ascontiguousarray(block, dtype=np.float32), min(self.k, len(block)),
                             metric=self.metric)
            self.merge(self._sign * d, np.where(i >= 0, i + self._offset, -1))
        self._offset += len(block)

    def merge(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Fold in candidates (`scores` as sign * score, like self.scores) of the same queries; on equal
        scores the ones already held rank first, so parts merged in row order rank like one stream."""
        all_d, all_i = np.concatenate([self.scores, scores], 1), np.concatenate([self.ids, ids], 1)
        order = np.argsort(all_d, axis=1, kind="stable")[:, : self.k]
        self.scores, self.ids = np.take_along_axis(all_d, order, 1), np.take_along_axis(all_i, order, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the exact top-k ids that the index also returned in its top-k."""
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def drop_self(ids: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's ids without the query's own id, first k kept (-1 padded): a data vector used as a query
    would otherwise always find itself, which flatters recall."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for r, (row, own) in enumerate(zip(ids, self_ids, strict=True)):
        kept = row[row != own][:k]
        out[r, : len(kept)] = kept
    return out


def _index_recall(index: faiss.Index, queries: np.ndarray, truth: np.ndarray,
                  query_ids: np.ndarray | None) -> float:
    if query_ids is None:
        _, found = index.search(queries, truth.shape[1])
        return recall_at_k(found, truth)
    k = truth.shape[1] - 1
    _, found = index.search(queries, k + 1)
    return recall_at_k(drop_self(found, query_ids, k), drop_self(truth, query_ids, k))


def latency_ms(index: faiss.Index, queries: np.ndarray, k: int, repeat: int = 1) -> tuple[float, float]:
    """p50 and p95 of single-query searches (one thread, as a serving process answers one user)."""
    times = []
    with single_thread():
        for _ in range(repeat):
            for q in queries:
                t = time.perf_counter()
                index.search(q[None, :], k)
                times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def _candidates(choice: IndexChoice) -> tuple[str, list[int]]:
    if choice.kind == "hnsw":
        return "efSearch", list(EF_SEARCH)
    nlist = choice.params.get("nlist", 1)
    return "nprobe", [v for v in NPROBE if v <= nlist] or [1]


@dataclass
class Tuning:
    param: dict[str, int]
    recall: float
    curve: list[tuple[int, float]]  # (value, recall@k) for each value tried


def tune_search_param(index: faiss.Index, choice: IndexChoice, queries: np.ndarray, truth: np.ndarray,
                      target: float, *, query_ids: np.ndarray | None = None) -> Tuning:
    """The smallest search parameter whose recall@k reaches `target` (if none does: the cheapest near the best).

    With query_ids (the queries are indexed vectors with these ids), truth holds k+1 ids a row and each
    query's own id is left out of both sides: recall@k of its k true neighbours.

    Recall rises with the parameter: gallop up (1st, 2nd, 4th, 8th... value) until the target is met, so
    costly large values are tried only when needed, then binary-search the last gap.
    """
    if choice.search_param is None:
        return Tuning({}, _index_recall(index, queries, truth, query_ids), [])
    name, values = _candidates(choice)
    curve: dict[int, float] = {}

    def measure(i: int) -> float:
        if values[i] not in curve:
            set_search_param(index, {name: values[i]})
            curve[values[i]] = _index_recall(index, queries, truth, query_ids)
        return curve[values[i]]

    lo, step, hi = -1, 1, 0
    while measure(hi) < target:  # invariant: values[lo] misses the target (or lo == -1)
        if hi == len(values) - 1:
            break
        lo, hi = hi, min(len(values) - 1, hi + step)
        step *= 2
    if measure(hi) >= target:
        while hi - lo > 1:  # values[hi] reaches the target, values[lo] does not
            mid = (lo + hi) // 2
            if measure(mid) >= target:
                hi = mid
            else:
                lo = mid
    best = hi
    if measure(best) < target:  # a plateau below the target: the cheapest value within 0.01 of the best seen
        top = max(curve.values())
        best = min(i for i, v in enumerate(values) if v in curve and curve[v] >= top - 0.01)
    set_search_param(index, {name: values[best]})
    return Tuning({name: values[best]}, measure(best), sorted(curve.items()))
