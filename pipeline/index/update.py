"""Index update: a snapshot's index from the previous snapshot's, removing the chunks that went and adding the new.

Decides update or full rebuild (build.py) and says why; the diff is read from the two snapshots' rows
(chunk_id + content_hash), so callers pass no change lists. Only the added rows' vectors are read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import IndexBuildError, StoreError
from ..store import Snapshot
from .build import (
    BM25_MAX_ROWS,
    IndexReport,
    _build_bm25,
    _peak_rss,
    _release_memory,
    _Timer,
    _vectors_meta,
    build_index,
)
from .files import INDEX_FILE, META_FILE, copy_rows, index_file_bytes, read_index_rows, save_faiss, save_meta
from .ids import ID_LAYOUT, can_remove, remove_and_renumber
from .select import read_batch_rows, select_index

__all__ = ["DRIFT_THRESHOLD", "update_index"]

log = logging.getLogger(__name__)

# Inverted lists are rebuilt once more than this fraction of the rows they were trained on has been added
# (or removed) by updates: vectors keep landing in the lists of centroids trained without them.
DRIFT_THRESHOLD = 0.2
_KEY_SEPARATOR = "\x1f"


@dataclass
class _Diff:
    new_id: np.ndarray  # previous FAISS id (= previous row) -> row in the new snapshot, -1 when removed
    added: np.ndarray  # rows of the new snapshot whose vectors are not in the previous index, sorted
    meta: dict[str, Any]  # the previous index's meta.json


def _keys(table: pa.Table) -> pa.ChunkedArray:
    """chunk_id + content_hash of each row: a changed chunk keeps its id but not its hash."""
    return pc.binary_join_element_wise(table.column("chunk_id"), table.column("content_hash"), _KEY_SEPARATOR)


def _diff(previous: Snapshot, snap: Snapshot) -> tuple[np.ndarray, np.ndarray] | str:
    """(new_id, added) between the previous index's rows and the new snapshot's, or why they cannot be matched."""
    old = _keys(read_index_rows(previous.index_dir).select(["chunk_id", "content_hash"]))
    try:
        new = _keys(pq.read_table(snap.vectors_path, columns=["chunk_id", "content_hash"]))
    except (FileNotFoundError, pa.ArrowInvalid, OSError, KeyError) as e:
        raise StoreError(f"{snap.vectors_path}: cannot read chunk ids: {e}") from None
    for name, keys in (("previous", old), ("new", new)):
        if pc.count_distinct(keys).as_py() != len(keys):
            return f"the {name} snapshot repeats a chunk (same chunk_id and content): rows cannot be matched"
    new_id = pc.fill_null(pc.index_in(old, value_set=new), -1).to_numpy().astype(np.int64)
    fresh = np.ones(len(new), dtype=bool)
    fresh[new_id[new_id >= 0]] = False
    return new_id, np.flatnonzero(fresh)


def _rebuild_reason(previous: Snapshot | None, snap: Snapshot, index_type: str, memory_budget_bytes: int,
                    drift_threshold: float) -> str | _Diff:
    """Why the new snapshot's index must be built from scratch, or the diff to apply to the previous one."""
    if previous is None or not (previous.index_dir / INDEX_FILE).is_file():
        return "no previous index"
    try:
        meta: dict[str, Any] = json.loads((previous.index_dir / META_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return "the previous index has no readable meta.json"
    if meta.get("id_layout") != ID_LAYOUT:
        return "index from an older version (its FAISS ids are not renumberable row ids)"
    n, dim, vec_meta = _vectors_meta(snap.vectors_path)
    if n == 0:
        return "no vectors"  # build_index says so with the path
    metric = "inner_product" if vec_meta.get("normalize", True) else "l2"
    if (dim, metric, vec_meta.get("fingerprint", {})) != (meta.get("dimension"), meta.get("metric"),
                                                          meta.get("fingerprint", {})):
        return "the vectors' model, dimension or metric differ from the previous index's"
    try:
        choice = select_index(n, dim, memory_budget_bytes, index_type)
    except ValueError as e:
        raise IndexBuildError(str(e)) from None
    if choice.factory != meta.get("factory"):
        return (f"{n} vectors call for {choice.factory} ({choice.reason}); "
                f"the previous index is {meta.get('factory')}")
    if choice.kind == "hnsw":
        return "a graph index (HNSW) cannot remove vectors"
    diff = _diff(previous, snap)
    if isinstance(diff, str):
        return diff
    new_id, added = diff
    if choice.kind != "flat":  # exact search never goes stale; trained centroids do
        base = max(1, int(meta.get("built_vectors") or meta.get("vectors") or 1))
        changed = max(int(meta.get("added_since_build", 0)) + len(added),
                      int(meta.get("removed_since_build", 0)) + int((new_id < 0).sum()))
        if changed / base > drift_threshold:
            return (f"{changed / base:.0%} of the {base} rows the lists were trained on changed since the index "
                    f"was built (threshold {drift_threshold:.0%}): its centroids are stale")
    return _Diff(new_id, added, meta)


def _added_vectors(path: Path, rows: np.ndarray, batch_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row numbers, vectors) of the given sorted rows, batch by batch, reading only the row groups holding them."""
    source = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    starts = np.cumsum([0] + [source.metadata.row_group(g).num_rows for g in range(source.num_row_groups)])
    groups = sorted(set((np.searchsorted(starts, rows, side="right") - 1).tolist()))
    for group in groups:
        offset = int(starts[group])
        for batch in source.iter_batches(batch_size=batch_rows, row_groups=[group], columns=["vector"]):
            lo, hi = np.searchsorted(rows, [offset, offset + batch.num_rows])
            if hi > lo:
                column = batch.column(0)
                matrix = column.values.to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
                picked = rows[lo:hi]
                yield picked, np.ascontiguousarray(matrix[picked - offset], dtype=np.float32)
            offset += batch.num_rows


def update_index(
    previous: Snapshot | None,
    snap: Snapshot,
    *,
    index_type: str = "auto",
    memory_budget_bytes: int = 4 << 30,
    target_recall: float = 0.95,
    drift_threshold: float = DRIFT_THRESHOLD,
    progress: Callable[[int], None] | None = None,
    bm25: bool = True,
    bm25_max_rows: int = BM25_MAX_ROWS,
    batch_rows: int | None = None,
) -> IndexReport:
    """The index of `snap`, made from `previous`'s by removing and adding vectors, or rebuilt when it must be.

    The report's `mode` says which ("updated" or "rebuilt") and `mode_reason` why: no previous index, one
    from an older version, another model, a different choice for the new size, a graph index (cannot
    remove), or drift past `drift_threshold` for inverted lists. An update keeps the previous search
    parameter (no tuning pass) and rebuilds BM25. Raises IndexBuildError when nothing fits the budget.
    """
    started = time.perf_counter()
    timer = _Timer()
    with timer.step("diff"):
        plan = _rebuild_reason(previous, snap, index_type, memory_budget_bytes, drift_threshold)
    if isinstance(plan, _Diff) and previous is not None:
        try:
            with timer.step("load"):
                index = faiss.read_index(str(previous.index_dir / INDEX_FILE))
        except RuntimeError as e:
            plan = f"the previous index is unreadable ({str(e).splitlines()[0][:120]})"
        else:
            if index.ntotal != len(plan.new_id):
                plan = f"the previous index holds {index.ntotal} vectors for {len(plan.new_id)} rows"
            elif not can_remove(index):
                plan = f"the previous index ({plan.meta.get('factory')}) cannot remove vectors"
    if not isinstance(plan, _Diff):
        log.info("index: rebuilding (%s)", plan)
        report = build_index(snap, index_type=index_type, memory_budget_bytes=memory_budget_bytes,
                             target_recall=target_recall, progress=progress, bm25=bm25, batch_rows=batch_rows,
                             bm25_max_rows=bm25_max_rows)
        report.mode, report.mode_reason = "rebuilt", plan
        report.seconds = {"diff": timer.seconds["diff"], **report.seconds}
        save_meta(asdict(report), snap.index_dir)
        return report

    n, dim, _ = _vectors_meta(snap.vectors_path)
    with timer.step("remove"):
        removed = remove_and_renumber(index, plan.new_id)
    with timer.step("add"):
        for rows, vectors in _added_vectors(snap.vectors_path, plan.added, batch_rows or read_batch_rows(dim)):
            index.add_with_ids(vectors, rows.astype(np.int64))
            if progress:
                progress(len(rows))
    if index.ntotal != n:
        raise IndexBuildError(f"{snap.vectors_path}: the updated index holds {index.ntotal} vectors, "
                              f"the snapshot {n}")
    with timer.step("save"):
        index_bytes = save_faiss(index, snap.index_dir)
        del index
        _release_memory()
        copy_rows(snap.vectors_path, snap.index_dir)
    has_bm25 = False
    if bm25:
        with timer.step("bm25"):  # bm25s cannot add or remove documents: rebuilt from the rows' texts
            has_bm25 = _build_bm25(snap.index_dir, bm25_max_rows)

    known = {f.name for f in fields(IndexReport)}
    report = IndexReport(**{k: v for k, v in plan.meta.items() if k in known})
    report.tuning = [tuple(t) for t in report.tuning]  # type: ignore[misc]
    added = len(plan.added)
    report.mode = "updated"
    report.mode_reason = (f"{removed} vectors removed, {added} added in place; search parameter, recall and "
                          f"latency as measured at the last build ({report.built_vectors} vectors)")
    report.vectors, report.added, report.removed = n, added, removed
    report.added_since_build += added
    report.removed_since_build += removed
    report.target_recall, report.memory_budget_bytes = target_recall, memory_budget_bytes
    report.index_bytes, report.file_bytes = index_bytes, index_file_bytes(snap.index_dir)
    report.peak_rss_bytes, report.bm25 = _peak_rss(), has_bm25
    report.build_seconds, report.seconds = round(time.perf_counter() - started, 3), timer.seconds
    save_meta(asdict(report), snap.index_dir)
    return report
