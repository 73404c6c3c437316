"""Index building: FAISS from a snapshot's Parquet vectors, streamed in batches, then tuned and saved.

Saves through files.py: the index, its rows, the BM25 index for hybrid search and the IndexReport (choice,
search parameter, measured recall@10, latency, memory). Vectors are never all in memory outside the index.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import resource
import sys
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
from ..store import META_KEY, Snapshot, iter_vector_batches
from .bm25 import Bm25Index
from .files import (
    copy_rows,
    index_file_bytes,
    note_bm25_skipped,
    read_index_rows,
    save_bm25,
    save_faiss,
    save_meta,
)
from .ids import ID_LAYOUT, with_row_ids
from .score import ExactTopK, latency_ms, single_thread, tune_search_param
from .select import read_batch_rows, select_index

__all__ = ["IndexReport", "build_index"]

log = logging.getLogger(__name__)

BM25_MAX_ROWS = 200_000  # [index] bm25_max_rows: past it no lexical index (and no --hybrid)
RECALL_QUERIES = 200
LATENCY_QUERIES = 100
RECALL_K = 10
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
    # How this index came to be: "built" (build_index), "updated" in place or "rebuilt" (update_index), and why
    mode: str = "built"
    mode_reason: str = ""
    id_layout: str = ID_LAYOUT  # FAISS id = row of rows.arrow; indexes without it predate in-place updates
    built_vectors: int = 0  # vectors at the last full build: the base of the drift update_index measures
    added_since_build: int = 0  # vectors added by in-place updates since then
    removed_since_build: int = 0  # vectors removed by them
    added: int = 0  # by this update
    removed: int = 0


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


class _Build:
    """The steps every build of a snapshot's index shares: choose it, draw the samples and train it (before
    the vectors are added), then tune, save and report (after). build_index adds the vectors in this process,
    sharded.py in Ray tasks: so both choose, train, measure recall and write files the same way.
    """

    def __init__(self, snap: Snapshot, *, index_type: str, memory_budget_bytes: int,
                 batch_rows: int | None) -> None:
        self.started = time.perf_counter()
        self.timer = _Timer()
        self.snap = snap
        self.n, self.dim, self.vec_meta = _vectors_meta(snap.vectors_path)
        if self.n == 0 or self.dim == 0:
            raise IndexBuildError(f"{snap.vectors_path}: no vectors to index")
        self.metric = faiss.METRIC_INNER_PRODUCT if self.vec_meta.get("normalize", True) else faiss.METRIC_L2
        try:
            self.choice = select_index(self.n, self.dim, memory_budget_bytes, index_type)
        except ValueError as e:
            raise IndexBuildError(str(e)) from None
        self.memory_budget_bytes = memory_budget_bytes
        self.batch_rows = batch_rows or read_batch_rows(self.dim)
        self.index: Any = None
        self.queries = np.zeros((0, self.dim), np.float32)
        self.query_ids = np.zeros(0, np.int64)
        self._train_sample: np.ndarray | None = None

    def sample(self, seed: int) -> None:
        """One pass over the vectors draws the recall queries and, for a trained index, its training rows."""
        log.info("index: %s for %d x %d (%s)", self.choice.factory, self.n, self.dim, self.choice.reason)
        self.index = faiss.index_factory(self.dim, self.choice.factory, self.metric)
        _prepare(self.index)
        rng = np.random.default_rng(seed)
        wanted = {"queries": np.sort(rng.choice(self.n, size=min(self.n, RECALL_QUERIES), replace=False))}
        if not self.index.is_trained:
            if self.n < self.choice.params.get("nlist", 1):
                raise IndexBuildError(f"{self.n} vectors are too few to train {self.choice.factory} "
                                      f"({self.choice.params['nlist']} lists); use --index-type flat or hnsw")
            train_rows = min(self.n, self.choice.train_rows)
            wanted["train"] = np.sort(rng.choice(self.n, size=train_rows, replace=False))
        with self.timer.step("sample"):
            samples = _sample(self.snap.vectors_path, self.batch_rows, wanted)
        self.queries, self.query_ids = samples.pop("queries"), wanted["queries"]
        self._train_sample = samples.get("train")

    def threads(self) -> contextlib.AbstractContextManager[None]:
        """Small jobs run on one thread: an OpenMP team on a busy 2-core machine costs more than it saves."""
        return single_thread() if self.n * self.dim < SMALL_JOB_FLOATS else contextlib.nullcontext()

    def train(self) -> None:
        if self._train_sample is not None:
            with self.timer.step("train"):
                self.index.train(self._train_sample)
            self._train_sample = None
        _release_memory()

    def exact_topk(self) -> ExactTopK | None:
        """The exact neighbours of the recall queries, to fill as vectors stream past (none for exact search).

        k+1: each recall query is an indexed vector, and its own id is left out when recall is counted.
        """
        if self.choice.search_param is None:
            return None
        return ExactTopK(self.queries, RECALL_K + 1, self.metric)

    def finish(self, truth: np.ndarray | None, *, target_recall: float, bm25: bool, bm25_max_rows: int,
               mode_reason: str = "", estimated_peak_bytes: int | None = None) -> IndexReport:
        """Tune the filled index against `truth` (exact_topk's ids); save it, its rows, BM25 and the report.

        `estimated_peak_bytes`: this process's estimate when it is not the choice's (a sharded build's merge).
        """
        if self.index.ntotal != self.n:
            raise IndexBuildError(f"{self.snap.vectors_path}: read {self.index.ntotal} vectors, "
                                  f"metadata says {self.n}")
        choice, timer, index_dir = self.choice, self.timer, self.snap.index_dir
        with timer.step("tune"):
            if truth is not None:
                tuning = tune_search_param(self.index, choice, self.queries, truth, target_recall,
                                           query_ids=self.query_ids)
                params, recall, curve = tuning.param, tuning.recall, tuning.curve
            else:
                params, recall, curve = {}, 1.0, []
            p50, p95 = latency_ms(self.index, self.queries[:LATENCY_QUERIES], RECALL_K)

        with timer.step("save"):
            index = with_row_ids(self.index)  # exact indexes get an id map: updates can remove and renumber
            self.index = None
            index_bytes = save_faiss(index, index_dir)
            del index  # the lexical index is built after the vectors' index is gone from memory
            _release_memory()
            copy_rows(self.snap.vectors_path, index_dir)
        has_bm25 = False
        if bm25:
            with timer.step("bm25"):
                has_bm25 = _build_bm25(index_dir, bm25_max_rows)

        report = IndexReport(
            kind=choice.kind, factory=choice.factory, vectors=self.n, dimension=self.dim,
            metric="inner_product" if self.metric == faiss.METRIC_INNER_PRODUCT else "l2",
            reason=choice.reason,
            search_param=params, recall_at_10=round(recall, 4), recall_queries=len(self.queries),
            target_recall=target_recall, tuning=[(v, round(r, 4)) for v, r in curve],
            latency_p50_ms=round(p50, 3), latency_p95_ms=round(p95, 3),
            memory_budget_bytes=self.memory_budget_bytes, estimated_bytes=choice.estimated_bytes,
            estimated_peak_bytes=estimated_peak_bytes or choice.peak_bytes, index_bytes=index_bytes,
            file_bytes=index_file_bytes(index_dir),
            peak_rss_bytes=_peak_rss(), bm25=has_bm25,
            build_seconds=round(time.perf_counter() - self.started, 3),
            seconds=timer.seconds, fingerprint=self.vec_meta.get("fingerprint", {}), built_vectors=self.n,
            mode_reason=mode_reason,
        )
        save_meta(asdict(report), index_dir)
        return report


def build_index(
    snap: Snapshot,
    *,
    index_type: str = "auto",
    memory_budget_bytes: int = 4 << 30,
    target_recall: float = 0.95,
    progress: Callable[[int], None] | None = None,
    bm25: bool = True,
    bm25_max_rows: int = BM25_MAX_ROWS,
    batch_rows: int | None = None,
    seed: int = 0,
) -> IndexReport:
    """Select, build, tune and save the index of a snapshot; returns (and saves) its report.

    Streams vectors.parquet: one pass draws the training and recall samples; for inverted lists one pass
    assigns each vector to its list (and streams exact search for the recall queries), one encodes it
    into lists sized exactly beforehand; flat and graph indexes add in one pass. Raises IndexBuildError with the
    numbers when the budget cannot hold any index, or there are too few vectors to train the one asked for.
    """
    build = _Build(snap, index_type=index_type, memory_budget_bytes=memory_budget_bytes,
                   batch_rows=batch_rows)
    build.sample(seed)
    with build.threads():
        build.train()
        exact = build.exact_topk()
        _add_all(build.index, snap.vectors_path, build.batch_rows, build.n, exact, progress, build.timer)
    return build.finish(exact.ids if exact is not None else None, target_recall=target_recall, bm25=bm25,
                        bm25_max_rows=bm25_max_rows)


def _transform(pre: faiss.IndexPreTransform | None, x: np.ndarray) -> np.ndarray:
    if pre is None:
        return x
    for i in range(pre.chain.size()):
        x = pre.chain.at(i).apply(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def _add_all(index: faiss.Index, path: Path, batch_rows: int, n: int, exact: ExactTopK | None,
             progress: Callable[[int], None] | None, timer: _Timer,
             rows: tuple[int, int] | None = None) -> None:
    """Add every vector (or those of `rows`, [start, stop), with their row numbers as ids: a shard of a
    sharded build, into inverted lists only), batch by batch, allocating the index's storage once at its final
    size.

    Growing storage by appends doubles it now and then, and the copy briefly holds old and new: up to
    ~2x the index at the peak. So flat storage is reserved up front, and inverted lists get an assignment
    pass first (which list each vector goes to; 8 bytes a vector) and are sized exactly before the add
    pass encodes into them, reusing the assignments.
    """
    def blocks() -> Iterator[np.ndarray]:
        if rows is None:
            return iter_vector_batches(path, batch_rows)
        return iter_vector_batches(path, batch_rows, *rows)

    first_id = 0 if rows is None else rows[0]
    outer = faiss.downcast_index(index)
    pre = outer if isinstance(outer, faiss.IndexPreTransform) else None
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except (RuntimeError, AttributeError):
        ivf = None
    if ivf is None or not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.ArrayInvertedLists):
        if rows is not None:
            raise ValueError(f"{type(outer).__name__}: only inverted lists are built from a range of rows")
        storage = faiss.downcast_index(outer.storage) if isinstance(outer, faiss.IndexHNSW) else outer
        if isinstance(storage, faiss.IndexFlatCodes):
            storage.codes.resize(n * storage.code_size)  # zero-filled at its final size, then emptied:
            storage.codes.resize(0)  # the capacity stays
        with timer.step("add"):
            for block in blocks():
                index.add(block)
                if exact is not None:
                    exact.add(block)
                if progress:
                    progress(len(block))
        return
    assign = np.empty(n, dtype=np.int64)
    with timer.step("assign"):
        offset = 0
        for block in blocks():
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
        for block in blocks():
            x = np.ascontiguousarray(_transform(pre, block))
            lists = np.ascontiguousarray(assign[offset : offset + len(x)])
            ids = np.arange(first_id + offset, first_id + offset + len(x), dtype=np.int64)
            ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
            offset += len(x)
            if progress:
                progress(len(x))
    if pre is not None:
        pre.ntotal = ivf.ntotal


def _build_bm25(index_dir: Path, max_rows: int = BM25_MAX_ROWS) -> bool:
    """The BM25 index of the chunk texts, saved beside the index; False when bm25s is not installed or the
    rows are over max_rows (bm25s rebuilds whole, ~0.3 ms a chunk here: the cap bounds a re-index's time)."""
    rows = read_index_rows(index_dir)
    if rows.num_rows > max_rows:
        log.info("BM25 skipped: %d chunks, over bm25_max_rows %d", rows.num_rows, max_rows)
        note_bm25_skipped(index_dir, rows.num_rows, max_rows)
        return False
    column = rows.column("text")
    texts = (t for chunk in column.chunks for t in chunk.to_pylist())
    try:
        bm25 = Bm25Index.build(texts)
    except ImportError:  # pragma: no cover - bm25s is a declared dependency; an old venv may lack it
        log.warning("bm25s is not installed: no lexical index, so no --hybrid search")
        return False
    save_bm25(bm25, index_dir)
    return True
