"""Index building: FAISS from a snapshot's Parquet vectors, streamed in batches, then tuned and saved.

Writes index/index.faiss (plain faiss.read_index opens it), index/rows.arrow (FAISS id -> chunk row, an
Arrow IPC file that searches memory-map, so chunk texts are read only for the hits),
index/bm25/ (the lexical index for hybrid search) and index/meta.json (the IndexReport: choice, search
parameter, measured recall@10, latency, memory). Vectors are never all in memory outside the index itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import resource
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import IndexBuildError, StoreError
from ..store import META_KEY, ROW_COLUMNS, Snapshot, read_rows, write_json_atomic
from .score import ExactTopK, latency_ms, set_search_param, single_thread, tune_search_param
from .select import read_batch_rows, select_index

__all__ = ["IndexReport", "build_index", "iter_vector_batches", "load_index", "read_index_rows", "set_search_param"]

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.arrow"
LEGACY_ROWS_FILE = "rows.parquet"  # indexes built before rows.arrow
META_FILE = "meta.json"
BM25_DIR = "bm25"
RECALL_QUERIES = 200
LATENCY_QUERIES = 100
RECALL_K = 10
ROWS_BATCH = 8192
SMALL_JOB_FLOATS = 1 << 24  # n * dim below this: build on one thread


@dataclass
class IndexReport:
    """What was built and how good it is; saved as index/meta.json and printed by `pipeline index`."""

    kind: str
    factory: str
    vectors: int
    dimension: int
    metric: str
    reason: str
    search_param: dict[str, int] = field(default_factory=dict)
    recall_at_10: float = 1.0  # against exact search; queries: sampled indexed vectors (their own id left out)
    recall_queries: int = 0
    target_recall: float = 0.95
    tuning: list[tuple[int, float]] = field(default_factory=list)  # (search param value, recall@10) tried
    latency_p50_ms: float = 0.0  # single queries, one thread
    latency_p95_ms: float = 0.0
    memory_budget_bytes: int = 0
    estimated_bytes: int = 0  # the index in memory, estimated before building
    estimated_peak_bytes: int = 0  # the build's peak, estimated before building
    index_bytes: int = 0  # the index as built (serialised size, ≈ its memory)
    file_bytes: int = 0  # index.faiss + rows.arrow + bm25/
    peak_rss_bytes: int = 0  # of the building process (includes whatever it held before)
    bm25: bool = False
    build_seconds: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)  # per step: sample, train, add, tune, save, bm25
    fingerprint: dict[str, Any] = field(default_factory=dict)


def _open(path: Path) -> pq.ParquetFile:
    try:
        # pre_buffer off and a small read buffer: pages are decompressed as batches are asked for, so a
        # snapshot written as one huge row group still streams (pre-buffering would load its whole column).
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{path}: cannot read vectors: {e}") from None


def iter_vector_batches(path: Path, batch_rows: int) -> Iterator[np.ndarray]:
    """The vector column as float32 (rows, dim) blocks of at most batch_rows, in file order."""
    for batch in _open(path).iter_batches(batch_size=batch_rows, columns=["vector"]):
        column = batch.column(0)
        if not isinstance(column.type, pa.FixedSizeListType):
            raise StoreError(f"{path}: column 'vector' is not fixed_size_list<float32>")
        dim = column.type.list_size
        yield column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def _sample(path: Path, batch_rows: int, wanted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows at sorted positions, for several named samples, in one pass over the file."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    offset = 0
    for block in iter_vector_batches(path, batch_rows):
        for name, rows in wanted.items():
            lo, hi = np.searchsorted(rows, [offset, offset + len(block)])
            if hi > lo:
                parts[name].append(block[rows[lo:hi] - offset].copy())  # a copy, so the batch can go
        offset += len(block)
    return {name: np.concatenate(p) if p else np.zeros((0, 0), np.float32) for name, p in parts.items()}


def _prepare(index: faiss.Index) -> None:
    """Build-time settings FAISS's factory leaves costly: no polysemous PQ training (minutes here, unused)."""
    with contextlib.suppress(RuntimeError, AttributeError):
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        if isinstance(ivf, faiss.IndexIVFPQ):
            ivf.do_polysemous_training = False


def _release_memory() -> None:
    """Hand freed memory back to the OS (Arrow's pool and glibc keep freed blocks), so RSS shows what is held."""
    pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _dir_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        log.info("index: %s ...", name)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)
            log.info("index: %s done in %.1f s", name, self.seconds[name])


def _vectors_meta(path: Path) -> tuple[int, int, dict[str, Any]]:
    try:
        schema = pq.read_schema(path)
        n = pq.ParquetFile(path).metadata.num_rows
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{path}: cannot read vectors: {e}") from None
    meta: dict[str, Any] = json.loads((schema.metadata or {}).get(META_KEY, b"{}"))
    dim = int(meta.get("dimension") or 0)
    if not dim and "vector" in schema.names and isinstance(schema.field("vector").type, pa.FixedSizeListType):
        dim = schema.field("vector").type.list_size
    return n, dim, meta


def build_index(
    snap: Snapshot,
    *,
    index_type: str = "auto",
    memory_budget_bytes: int = 4 << 30,
    target_recall: float = 0.95,
    progress: Callable[[int], None] | None = None,
    bm25: bool = True,
    batch_rows: int | None = None,
    seed: int = 0,
) -> IndexReport:
    """Select, build, tune and save the index of a snapshot; returns (and saves) its report.

    Streams vectors.parquet: one pass draws the training and recall samples; for inverted lists one pass
    assigns each vector to its list (and streams exact search for the recall queries), one encodes it
    into lists sized exactly beforehand; flat and graph indexes add in one pass. Raises IndexBuildError with the
    numbers when the budget cannot hold any index, or there are too few vectors to train the one asked for.
    """
    started = time.perf_counter()
    timer = _Timer()
    n, dim, vec_meta = _vectors_meta(snap.vectors_path)
    if n == 0 or dim == 0:
        raise IndexBuildError(f"{snap.vectors_path}: no vectors to index")
    metric = faiss.METRIC_INNER_PRODUCT if vec_meta.get("normalize", True) else faiss.METRIC_L2
    try:
        choice = select_index(n, dim, memory_budget_bytes, index_type)
    except ValueError as e:
        raise IndexBuildError(str(e)) from None
    log.info("index: %s for %d x %d (%s)", choice.factory, n, dim, choice.reason)
    rows_per_batch = batch_rows or read_batch_rows(dim)
    index = faiss.index_factory(dim, choice.factory, metric)
    _prepare(index)

    rng = np.random.default_rng(seed)
    wanted = {"queries": np.sort(rng.choice(n, size=min(n, RECALL_QUERIES), replace=False))}
    if not index.is_trained:
        if n < choice.params.get("nlist", 1):
            raise IndexBuildError(f"{n} vectors are too few to train {choice.factory} "
                                  f"({choice.params['nlist']} lists); use --index-type flat or hnsw")
        wanted["train"] = np.sort(rng.choice(n, size=min(n, choice.train_rows), replace=False))
    with timer.step("sample"):
        samples = _sample(snap.vectors_path, rows_per_batch, wanted)
    queries = samples.pop("queries")
    # Small jobs run on one thread: an OpenMP team on a busy 2-core machine costs more than it saves.
    threads = single_thread() if n * dim < SMALL_JOB_FLOATS else contextlib.nullcontext()
    with threads:
        if "train" in samples:
            with timer.step("train"):
                index.train(samples.pop("train"))
        _release_memory()

        # k+1: each recall query is an indexed vector, and its own id is left out when recall is counted
        exact = ExactTopK(queries, RECALL_K + 1, metric) if choice.search_param is not None else None
        _add_all(index, snap.vectors_path, rows_per_batch, n, exact, progress, timer)
    if index.ntotal != n:
        raise IndexBuildError(f"{snap.vectors_path}: read {index.ntotal} vectors, metadata says {n}")

    with timer.step("tune"):
        if exact is not None:
            tuning = tune_search_param(index, choice, queries, exact.ids, target_recall,
                                       query_ids=wanted["queries"])
            params, recall, curve = tuning.param, tuning.recall, tuning.curve
        else:
            params, recall, curve = {}, 1.0, []
        p50, p95 = latency_ms(index, queries[:LATENCY_QUERIES], RECALL_K)

    snap.index_dir.mkdir(parents=True, exist_ok=True)
    with timer.step("save"):
        tmp = snap.index_dir / f".{INDEX_FILE}.{uuid.uuid4().hex[:8]}.tmp"
        faiss.write_index(index, str(tmp))
        tmp.replace(snap.index_dir / INDEX_FILE)
        index_bytes = (snap.index_dir / INDEX_FILE).stat().st_size
        del index  # the lexical index is built after the vectors' index is gone from memory
        _release_memory()
        _copy_rows(snap.vectors_path, snap.index_dir / ROWS_FILE)
    has_bm25 = False
    if bm25:
        with timer.step("bm25"):
            has_bm25 = _build_bm25(snap.index_dir / ROWS_FILE, snap.index_dir / BM25_DIR)

    report = IndexReport(
        kind=choice.kind, factory=choice.factory, vectors=n, dimension=dim,
        metric="inner_product" if metric == faiss.METRIC_INNER_PRODUCT else "l2", reason=choice.reason,
        search_param=params, recall_at_10=round(recall, 4), recall_queries=len(queries),
        target_recall=target_recall, tuning=[(v, round(r, 4)) for v, r in curve],
        latency_p50_ms=round(p50, 3), latency_p95_ms=round(p95, 3), memory_budget_bytes=memory_budget_bytes,
        estimated_bytes=choice.estimated_bytes, estimated_peak_bytes=choice.peak_bytes, index_bytes=index_bytes,
        file_bytes=sum(_dir_bytes(snap.index_dir / f) for f in (INDEX_FILE, ROWS_FILE, BM25_DIR)),
        peak_rss_bytes=_peak_rss(), bm25=has_bm25, build_seconds=round(time.perf_counter() - started, 3),
        seconds=timer.seconds, fingerprint=vec_meta.get("fingerprint", {}),
    )
    write_json_atomic(asdict(report), snap.index_dir / META_FILE)
    return report


def _transform(pre: faiss.IndexPreTransform | None, x: np.ndarray) -> np.ndarray:
    if pre is None:
        return x
    for i in range(pre.chain.size()):
        x = pre.chain.at(i).apply(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def _add_all(index: faiss.Index, path: Path, batch_rows: int, n: int, exact: ExactTopK | None,
             progress: Callable[[int], None] | None, timer: _Timer) -> None:
    """Add every vector, batch by batch, allocating the index's storage once at its final size.

    Growing storage by appends doubles it now and then, and the copy briefly holds old and new: up to
    ~2x the index at the peak. So flat storage is reserved up front, and inverted lists get an assignment
    pass first (which list each vector goes to; 8 bytes a vector) and are sized exactly before the add
    pass encodes into them, reusing the assignments.
    """
    outer = faiss.downcast_index(index)
    pre = outer if isinstance(outer, faiss.IndexPreTransform) else None
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except (RuntimeError, AttributeError):
        ivf = None
    if ivf is None or not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.ArrayInvertedLists):
        storage = faiss.downcast_index(outer.storage) if isinstance(outer, faiss.IndexHNSW) else outer
        if isinstance(storage, faiss.IndexFlatCodes):
            storage.codes.resize(n * storage.code_size)  # zero-filled at its final size, then emptied:
            storage.codes.resize(0)  # the capacity stays
        with timer.step("add"):
            for block in iter_vector_batches(path, batch_rows):
                index.add(block)
                if exact is not None:
                    exact.add(block)
                if progress:
                    progress(len(block))
        return
    assign = np.empty(n, dtype=np.int64)
    with timer.step("assign"):
        offset = 0
        for block in iter_vector_batches(path, batch_rows):
            _, lists = ivf.quantizer.search(_transform(pre, block), 1)
            assign[offset : offset + len(block)] = lists[:, 0]
            offset += len(block)
            if exact is not None:
                exact.add(block)
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    for list_no, count in enumerate(np.bincount(assign, minlength=ivf.nlist).tolist()):
        if count:
            invlists.resize(list_no, count)
            invlists.resize(list_no, 0)
    with timer.step("add"):
        offset = 0
        for block in iter_vector_batches(path, batch_rows):
            x = np.ascontiguousarray(_transform(pre, block))
            lists = np.ascontiguousarray(assign[offset : offset + len(x)])
            ivf.add_core(len(x), faiss.swig_ptr(x), None, faiss.swig_ptr(lists))
            offset += len(x)
            if progress:
                progress(len(x))
    if pre is not None:
        pre.ntotal = ivf.ntotal


def _copy_rows(src: Path, dest: Path) -> None:
    """Every column but the vector, copied batch by batch to dest (an Arrow IPC file, atomically)."""
    source = _open(src)
    columns = [c for c in ROW_COLUMNS if c in source.schema_arrow.names]
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        schema = pa.schema([source.schema_arrow.field(c) for c in columns], metadata=source.schema_arrow.metadata)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in source.iter_batches(batch_size=ROWS_BATCH, columns=columns):
                writer.write_batch(batch)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def read_index_rows(index_dir: Path) -> pa.Table:
    """The rows table of an index, memory-mapped: pages are read from disk only when a column is used."""
    path = index_dir / ROWS_FILE
    if not path.is_file() and (index_dir / LEGACY_ROWS_FILE).is_file():
        return read_rows(index_dir / LEGACY_ROWS_FILE)
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (FileNotFoundError, pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{path}: missing or unreadable index rows: {e}") from None


def _build_bm25(rows_path: Path, dest: Path) -> bool:
    """The BM25 index of the chunk texts, saved to dest; False when bm25s is not installed."""
    try:
        from ..hybrid import Bm25Index
    except ImportError:  # pragma: no cover - bm25s is a declared dependency; an old venv may lack it
        log.warning("bm25s is not installed: no lexical index, so no --hybrid search")
        return False
    column = read_index_rows(rows_path.parent).column("text")
    texts = (t for chunk in column.chunks for t in chunk.to_pylist())
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        Bm25Index.build(texts).save(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.replace(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


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
    rows = read_index_rows(snap.index_dir)
    if rows.num_rows != index.ntotal:
        raise StoreError(f"{snap.index_dir}: index holds {index.ntotal} vectors but rows has {rows.num_rows}")
    return index, rows, meta

