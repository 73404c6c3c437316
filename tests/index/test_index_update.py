import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from pipeline.index import build_index, load_index, update_index
from pipeline.index.files import read_index_rows
from pipeline.index.score import recall_at_k
from pipeline.records import Chunk
from pipeline.search import search_ids, search_vectors
from pipeline.store import chunk_table, new_snapshot_dir, normalize_rows, write_table_atomic

DIM = 32
META = {"model": "m", "dimension": DIM, "normalize": True, "fingerprint": {"model": "m", "dimension": DIM}}


def _vectors(n: int, seed: int, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(size=(clusters, DIM)).astype(np.float32)  # shared by every corpus
    matrix = centers[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, DIM)).astype(np.float32)
    return normalize_rows(matrix)


def _chunk(doc: int, version: int) -> Chunk:
    return Chunk(chunk_id=f"d{doc}:0", doc_id=f"d{doc}", source_path=f"d{doc}.txt", chunk_index=0, char_start=0,
                 char_end=3, text=f"document {doc} version {version}", token_count=3,
                 content_hash=f"h{doc}v{version}", doc_type="txt")


def _snapshot(tmp_path: Path, docs: dict[int, tuple[int, np.ndarray]]):
    """A snapshot of documents (doc -> (version, vector)), in doc order as a corpus walk writes them."""
    order = sorted(docs)
    snap = new_snapshot_dir(tmp_path)
    table = chunk_table([_chunk(d, docs[d][0]) for d in order], np.stack([docs[d][1] for d in order]), META)
    write_table_atomic(table, snap.vectors_path)
    return snap


def _corpora(tmp_path: Path, n: int, removed: int, changed: int, added: int):
    """A first snapshot of n documents, and a second with some removed, changed (same chunk id, new vector) and
    added, interleaved by document number so added rows land in the middle of the second's rows."""
    vectors = _vectors(n + added, seed=1)
    first = {2 * d: (0, vectors[d]) for d in range(n)}
    second = dict(first)
    rng = np.random.default_rng(2)
    docs = rng.permutation(sorted(first))
    for d in docs[:removed]:
        del second[int(d)]
    fresh = _vectors(changed, seed=3)
    for d, v in zip(docs[removed:removed + changed], fresh, strict=True):
        second[int(d)] = (1, v)
    for i, d in enumerate(rng.choice(n, size=added, replace=False)):
        second[2 * int(d) + 1] = (0, vectors[n + i])  # odd numbers: between existing docs
    return _snapshot(tmp_path, first), _snapshot(tmp_path, second)


def _fresh_copy(tmp_path: Path, snap):
    """Another snapshot holding the same vectors.parquet, for a from-scratch build to compare with."""
    other = new_snapshot_dir(tmp_path)
    shutil.copy(snap.vectors_path, other.vectors_path)
    return other


def test_flat_update_searches_like_a_fresh_build(tmp_path: Path) -> None:
    prev, snap = _corpora(tmp_path, 1000, removed=30, changed=40, added=50)
    build_index(prev)
    report = update_index(prev, snap)
    assert report.mode == "updated" and report.kind == "flat"
    assert (report.removed, report.added) == (70, 90)  # a changed chunk is one removed and one added
    assert report.vectors == 1020 and set(report.seconds) >= {"diff", "load", "remove", "add", "save", "bm25"}
    assert "tune" not in report.seconds and "train" not in report.seconds

    fresh = _fresh_copy(tmp_path, snap)
    build_index(fresh)
    index, rows, meta = load_index(snap)
    again, fresh_rows, _ = load_index(fresh)
    assert meta["mode"] == "updated" and meta["added_since_build"] == 90 and meta["built_vectors"] == 1000
    assert rows.column("chunk_id").to_pylist() == fresh_rows.column("chunk_id").to_pylist()
    queries = _vectors(100, seed=9)
    for q in queries:
        assert [i for i, _ in search_ids(index, q, 10)] == [i for i, _ in search_ids(again, q, 10)]
    # each vector of the new snapshot is found as its own row, the changed ones by their new vector
    matrix = np.stack(read_vectors(snap))
    hits = [search_vectors(index, rows, matrix[i], 1)[0] for i in range(0, len(matrix), 37)]
    assert [h.chunk_id for h in hits] == [rows.column("chunk_id")[i].as_py() for i in range(0, len(matrix), 37)]


def read_vectors(snap) -> list[np.ndarray]:
    import pyarrow.parquet as pq

    column = pq.read_table(snap.vectors_path, columns=["vector"]).column("vector").combine_chunks()
    return list(column.values.to_numpy().reshape(len(column), -1))


def test_filters_and_bm25_follow_the_updated_rows(tmp_path: Path) -> None:
    prev, snap = _corpora(tmp_path, 400, removed=10, changed=10, added=20)
    build_index(prev)
    update_index(prev, snap)
    index, rows, _ = load_index(snap)
    allowed = np.array([t.endswith("version 1") for t in rows.column("text").to_pylist()])
    assert allowed.sum() == 10
    found = search_ids(index, _vectors(1, seed=5)[0], 5, allowed)
    assert len(found) == 5 and all(allowed[i] for i, _ in found)
    from pipeline.index import load_bm25

    bm25 = load_bm25(snap.index_dir)
    assert bm25.num_docs == rows.num_rows
    row, _ = bm25.top("version 1", 1)[0]
    assert rows.column("text")[row].as_py().endswith("version 1")


def test_ivf_update_keeps_recall_and_search_parameter(tmp_path: Path) -> None:
    prev, snap = _corpora(tmp_path, 3000, removed=40, changed=60, added=100)  # 5% changed
    before = build_index(prev, index_type="ivf", target_recall=0.9, bm25=False)
    report = update_index(prev, snap, index_type="ivf", target_recall=0.9, bm25=False)
    assert report.mode == "updated" and report.factory == before.factory
    assert report.search_param == before.search_param and report.removed == 100 and report.added == 160

    fresh = _fresh_copy(tmp_path, snap)
    build_index(fresh, index_type="ivf", target_recall=0.9, bm25=False)
    index, rows, _ = load_index(snap)
    again, _, _ = load_index(fresh)
    matrix = np.stack(read_vectors(snap))
    exact = faiss.IndexFlatIP(DIM)
    exact.add(matrix)
    queries = _vectors(200, seed=11)
    _, truth = exact.search(queries, 10)
    _, updated = index.search(queries, 10)
    _, rebuilt = again.search(queries, 10)
    assert index.ntotal == len(matrix) == rows.num_rows
    assert recall_at_k(updated, truth) >= recall_at_k(rebuilt, truth) - 0.05
    assert recall_at_k(updated, truth) >= 0.85


def test_drift_past_the_threshold_rebuilds(tmp_path: Path) -> None:
    prev, snap = _corpora(tmp_path, 2000, removed=100, changed=400, added=100)  # 25% of rows changed
    build_index(prev, index_type="ivf", bm25=False)
    report = update_index(prev, snap, index_type="ivf", bm25=False)
    assert report.mode == "rebuilt" and "stale" in report.mode_reason and "25%" in report.mode_reason
    assert "tune" in report.seconds and report.built_vectors == report.vectors == 2000
    assert json.loads((snap.index_dir / "meta.json").read_text())["mode"] == "rebuilt"


def test_drift_accumulates_over_updates(tmp_path: Path) -> None:
    vectors = _vectors(3000, seed=1)
    docs = {d: (0, vectors[d]) for d in range(2000)}
    prev = _snapshot(tmp_path, docs)
    build_index(prev, index_type="ivf", bm25=False)
    modes = []
    for step in range(3):  # +300 rows (15% of 2000) each time: the second update crosses 20%
        docs.update({2000 + 300 * step + i: (0, vectors[2000 + 300 * step + i]) for i in range(300)})
        snap = _snapshot(tmp_path, docs)
        modes.append(update_index(prev, snap, index_type="ivf", bm25=False).mode)
        prev = snap
    assert modes == ["updated", "rebuilt", "updated"]


@pytest.mark.parametrize(("setup", "reason"), [
    ("none", "no previous index"),
    ("old", "older version"),
    ("hnsw", "cannot remove"),
    ("crossing", "call for"),
])
def test_rebuild_reasons(tmp_path: Path, setup: str, reason: str) -> None:
    prev, snap = _corpora(tmp_path, 600, removed=5, changed=5, added=5)
    if setup == "old":  # an index built before ids: a plain positional Flat and no id_layout in meta.json
        build_index(prev, bm25=False)
        index, _, meta = load_index(prev)
        faiss.write_index(faiss.downcast_index(index).index, str(prev.index_dir / "index.faiss"))
        del meta["id_layout"]
        (prev.index_dir / "meta.json").write_text(json.dumps(meta))
    elif setup == "hnsw":
        build_index(prev, index_type="hnsw", bm25=False)
    elif setup == "crossing":  # the previous index is an ANN one, the new size calls for exact search
        build_index(prev, index_type="ivf", bm25=False)
    kind = "hnsw" if setup == "hnsw" else "auto"
    report = update_index(None if setup == "none" else prev, snap, index_type=kind, bm25=False)
    assert report.mode == "rebuilt" and reason in report.mode_reason
    index, rows, _ = load_index(snap)
    assert index.ntotal == rows.num_rows == 600  # 5 removed, 5 added


def test_nothing_changed_is_an_update(tmp_path: Path) -> None:
    prev, _ = _corpora(tmp_path, 300, 0, 0, 0)
    build_index(prev, bm25=False)
    snap = _fresh_copy(tmp_path, prev)
    report = update_index(prev, snap, bm25=False)
    assert (report.mode, report.added, report.removed) == ("updated", 0, 0)
    assert read_index_rows(snap.index_dir).num_rows == 300
