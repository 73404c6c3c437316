"""Index building: FAISS from a snapshot's Parquet vectors, streamed in batches, then tuned and saved.

Writes index/index.faiss (plain faiss.read_index opens it), index/rows.parquet (FAISS id -> chunk row)
and index/meta.json (fingerprint, choice, search parameter, measured recall@10 and latency).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import IndexBuildError, StoreError
from ..store import META_KEY, Snapshot, read_rows, write_json_atomic, write_table_atomic
from .select import IndexChoice, select_index

__all__ = ["IndexReport", "build_index", "load_index", "set_search_param"]

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.parquet"
META_FILE = "meta.json"
READ_BATCH = 65_536
TRAIN_SAMPLE_PER_LIST = 64
RECALL_QUERIES = 200
RECALL_K = 10


@dataclass
class IndexReport:
    kind: str
    factory: str
    vectors: int
    dimension: int
    metric: str
    reason: str
    search_param: dict[str, int] = field(default_factory=dict)
    recall_at_10: float = 1.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    estimated_bytes: int = 0
    file_bytes: int = 0
    build_seconds: float = 0.0
    fingerprint: dict[str, Any] = field(default_factory=dict)


def _iter_vectors(path: Path) -> Iterator[np.ndarray]:
    try:
        reader = pq.ParquetFile(path)
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{path}: cannot read vectors: {e}") from None
    for batch in reader.iter_batches(batch_size=READ_BATCH, columns=["vector"]):
        column = batch.column(0)
        dim = column.type.list_size
        yield column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def _sample(path: Path, n_total: int, n_sample: int, seed: int = 0) -> np.ndarray:
    """A uniform sample of rows, read batch by batch (never the whole matrix)."""
    rng = np.random.default_rng(seed)
    wanted = np.sort(rng.choice(n_total, size=min(n_sample, n_total), replace=False))
    out, offset = [], 0
    for block in _iter_vectors(path):
        lo, hi = np.searchsorted(wanted, [offset, offset + len(block)])
        if hi > lo:
            out.append(block[wanted[lo:hi] - offset])
        offset += len(block)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def set_search_param(index: faiss.Index, params: dict[str, int]) -> None:
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, value)


def _exact_knn(path: Path, queries: np.ndarray, k: int, metric: int) -> np.ndarray:
    """Ground-truth ids by brute force over streamed batches, merged by score."""
    best_d = np.full((len(queries), k), -np.inf if metric == faiss.METRIC_INNER_PRODUCT else np.inf,
                     dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    offset = 0
    for block in _iter_vectors(path):
        d, i = faiss.knn(queries, block, min(k, len(block)), metric=metric)
        i = np.where(i >= 0, i + offset, -1)
        all_d, all_i = np.concatenate([best_d, d], 1), np.concatenate([best_i, i], 1)
        order = np.argsort(-all_d if metric == faiss.METRIC_INNER_PRODUCT else all_d, axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(all_d, order, 1), np.take_along_axis(all_i, order, 1)
        offset += len(block)
    return best_i


def _recall(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, k: int) -> float:
    _, found = index.search(queries, k)
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / max(1, int((truth >= 0).sum()))


def _latency(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[float, float]:
    times = []
    for q in queries[:100]:
        t = time.perf_counter()
        index.search(q[None, :], k)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


_TUNING = {"hnsw": ("efSearch", [16, 32, 64, 128, 256, 512, 1024]),
           "ivf": ("nprobe", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]),
           "ivfpq": ("nprobe", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])}


def _tune(index: faiss.Index, choice: IndexChoice, queries: np.ndarray, truth: np.ndarray,
          target: float) -> tuple[dict[str, int], float]:
    """The smallest search parameter reaching the target recall@10 (the largest tried if none does)."""
    if choice.kind not in _TUNING:
        return {}, _recall(index, queries, truth, RECALL_K)
    name, values = _TUNING[choice.kind]
    if choice.kind != "hnsw":
        values = [v for v in values if v <= choice.params.get("nlist", 1)] or [1]
    recall = 0.0
    for value in values:
        set_search_param(index, {name: value})
        recall = _recall(index, queries, truth, RECALL_K)
        if recall >= target:
            return {name: value}, recall
    return {name: values[-1]}, recall


def build_index(
    snap: Snapshot,
    *,
    index_type: str = "auto",
    memory_budget_bytes: int = 4 << 30,
    target_recall: float = 0.95,
    progress: Callable[[int], None] | None = None,
) -> IndexReport:
    """Build, tune and save the index of a snapshot. Raises IndexBuildError with the numbers."""
    started = time.perf_counter()
    meta_file = pq.read_schema(snap.vectors_path).metadata or {}
    vec_meta: dict[str, Any] = json.loads(meta_file.get(META_KEY, b"{}"))
    n = pq.ParquetFile(snap.vectors_path).metadata.num_rows
    dim = int(vec_meta.get("dimension") or 0)
    if n == 0 or dim == 0:
        raise IndexBuildError(f"{snap.vectors_path}: no vectors to index")
    metric = faiss.METRIC_INNER_PRODUCT if vec_meta.get("normalize", True) else faiss.METRIC_L2
    try:
        choice = select_index(n, dim, memory_budget_bytes, index_type)
    except ValueError as e:
        raise IndexBuildError(str(e)) from None
    index = faiss.index_factory(dim, choice.factory, metric)
    if not index.is_trained:
        need = choice.params.get("nlist", 1) * TRAIN_SAMPLE_PER_LIST
        sample = _sample(snap.vectors_path, n, max(need, 10_000))
        if len(sample) < choice.params.get("nlist", 1):
            raise IndexBuildError(f"{n} vectors are too few to train {choice.factory}; use --index-type flat")
        index.train(sample)
    for block in _iter_vectors(snap.vectors_path):
        index.add(block)
        if progress:
            progress(len(block))

    queries = _sample(snap.vectors_path, n, RECALL_QUERIES, seed=1)
    truth = _exact_knn(snap.vectors_path, queries, RECALL_K, metric) if choice.kind != "flat" else None
    params, recall = _tune(index, choice, queries, truth, target_recall) if truth is not None else ({}, 1.0)
    p50, p95 = _latency(index, queries, RECALL_K)

    snap.index_dir.mkdir(parents=True, exist_ok=True)
    tmp = snap.index_dir / f".{INDEX_FILE}.tmp"
    faiss.write_index(index, str(tmp))
    tmp.replace(snap.index_dir / INDEX_FILE)
    write_table_atomic(read_rows(snap.vectors_path), snap.index_dir / ROWS_FILE)
    report = IndexReport(
        kind=choice.kind, factory=choice.factory, vectors=n, dimension=dim,
        metric="inner_product" if metric == faiss.METRIC_INNER_PRODUCT else "l2", reason=choice.reason,
        search_param=params, recall_at_10=round(recall, 4), latency_p50_ms=round(p50, 3),
        latency_p95_ms=round(p95, 3), estimated_bytes=choice.estimated_bytes,
        file_bytes=(snap.index_dir / INDEX_FILE).stat().st_size,
        build_seconds=round(time.perf_counter() - started, 3),
        fingerprint=vec_meta.get("fingerprint", {}),
    )
    write_json_atomic(asdict(report), snap.index_dir / META_FILE)
    return report


def load_index(snap: Snapshot) -> tuple[faiss.Index, pa.Table, dict[str, Any]]:
    """The saved index with its search parameter applied, its rows table and its metadata."""
    path = snap.index_dir / INDEX_FILE
    if not path.is_file():
        raise StoreError(f"{path}: no index; run `pipeline index` first")
    try:
        meta = json.loads((snap.index_dir / META_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise StoreError(f"{snap.index_dir / META_FILE}: missing or corrupt index metadata: {e}") from None
    index = faiss.read_index(str(path))
    set_search_param(index, meta.get("search_param", {}))
    rows = read_rows(snap.index_dir / ROWS_FILE)
    if rows.num_rows != index.ntotal:
        raise StoreError(f"{snap.index_dir}: index holds {index.ntotal} vectors but rows has {rows.num_rows}")
    return index, rows, meta
