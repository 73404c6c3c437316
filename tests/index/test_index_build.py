import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import IndexBuildError, StoreError
from pipeline.index import build, build_index, load_index
from pipeline.index.score import single_thread
from pipeline.records import Chunk
from pipeline.search import search_vectors
from pipeline.store import chunk_table, new_snapshot_dir, normalize_rows, write_table_atomic


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Clustered unit vectors, like real embeddings: uniform noise would make every ANN index look broken."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    matrix = centers[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    return normalize_rows(matrix)


def make_snapshot(tmp_path: Path, n: int, dim: int = 32, seed: int = 0, row_group_size: int | None = None):
    matrix = clustered(n, dim, seed)
    chunks = [Chunk(chunk_id=f"d{i}:0", doc_id=f"d{i}", source_path=f"d{i}.txt", chunk_index=0, char_start=0,
                    char_end=3, text=f"t{i}", token_count=1, content_hash=f"h{i}", doc_type="txt")
              for i in range(n)]
    snap = new_snapshot_dir(tmp_path)
    meta = {"model": "m", "dimension": dim, "normalize": True, "fingerprint": {"model": "m", "dimension": dim}}
    table = chunk_table(chunks, matrix, meta)
    if row_group_size:
        pq.write_table(table, snap.vectors_path, row_group_size=row_group_size)
    else:
        write_table_atomic(table, snap.vectors_path)
    return snap, matrix


def test_flat_index_finds_each_vector_itself(tmp_path: Path) -> None:
    snap, matrix = make_snapshot(tmp_path, 300)
    report = build_index(snap)
    assert report.kind == "flat" and report.recall_at_10 == 1.0
    index, rows, meta = load_index(snap)
    assert faiss.read_index(str(snap.index_dir / "index.faiss")).ntotal == 300
    hits = search_vectors(index, rows, matrix[17], 3)
    assert hits[0].chunk_id == "d17:0" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert meta["factory"] == "Flat" and meta["bm25"] is True
    assert (snap.index_dir / "bm25").is_dir()


@pytest.mark.parametrize(("kind", "n", "dim"), [("hnsw", 3000, 32), ("ivf", 3000, 32), ("ivfsq", 3000, 32),
                                                ("ivfpq", 1500, 16)])
def test_ann_indexes_are_tuned_to_the_target_recall(tmp_path: Path, kind: str, n: int, dim: int) -> None:
    snap, matrix = make_snapshot(tmp_path, n, dim)
    report = build_index(snap, index_type=kind, target_recall=0.9, bm25=False)
    assert report.kind == kind
    assert report.search_param  # efSearch or nprobe was chosen
    (name, value), = report.search_param.items()
    assert name == ("efSearch" if kind == "hnsw" else "nprobe")
    curve = dict(report.tuning)
    assert curve[value] == report.recall_at_10
    if report.recall_at_10 >= 0.9:  # the smallest value tried that reaches the target
        assert all(r < 0.9 for v, r in curve.items() if v < value)
    if kind != "ivfpq":  # 4-byte PQ codes of 16-d vectors cannot always reach 0.9 at any nprobe
        assert report.recall_at_10 >= 0.9
    assert report.latency_p50_ms > 0 and report.latency_p95_ms >= report.latency_p50_ms
    assert report.index_bytes > 0 and report.peak_rss_bytes > 0
    assert set(report.seconds) >= {"sample", "add", "tune", "save"}
    index, rows, meta = load_index(snap)
    assert meta["search_param"] == report.search_param and meta["recall_at_10"] == report.recall_at_10
    if kind != "ivfpq":
        assert search_vectors(index, rows, matrix[5], 1)[0].chunk_id == "d5:0"


def test_meta_records_the_choice_and_the_budget(tmp_path: Path) -> None:
    snap, _ = make_snapshot(tmp_path, 2000, 32)
    report = build_index(snap, index_type="ivf", memory_budget_bytes=512 << 20, bm25=False)
    meta = json.loads((snap.index_dir / "meta.json").read_text())
    for key in ("kind", "factory", "reason", "search_param", "recall_at_10", "latency_p50_ms", "latency_p95_ms",
                "memory_budget_bytes", "estimated_bytes", "index_bytes", "peak_rss_bytes", "seconds"):
        assert key in meta, key
    assert meta["memory_budget_bytes"] == 512 << 20
    assert meta["factory"] == report.factory == f"IVF{report.search_param and meta['factory'][3:].split(',')[0]},Flat"
    assert abs(report.index_bytes - report.estimated_bytes) < 0.2 * report.index_bytes + 65536


def test_build_streams_in_batches_and_never_holds_the_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One row group holding everything, read in 256-row batches: no pass may see more than a batch.
    snap, matrix = make_snapshot(tmp_path, 2000, 32, row_group_size=1_000_000)
    passes: list[list[int]] = []
    real = build.iter_vector_batches

    def counting(path: Path, batch_rows: int):
        passes.append([])
        for block in real(path, batch_rows):
            passes[-1].append(len(block))
            yield block

    monkeypatch.setattr(build, "iter_vector_batches", counting)
    added: list[int] = []
    report = build_index(snap, index_type="ivf", batch_rows=256, progress=added.append, bm25=False)
    # sample (train + recall queries); assign to lists (+ exact search for the queries); add into sized lists
    assert len(passes) == 3 and set(report.seconds) >= {"sample", "train", "assign", "add"}
    assert all(max(p) <= 256 and sum(p) == 2000 for p in passes)
    assert added == passes[2]
    assert report.recall_at_10 >= 0.95
    passes.clear()
    build_index(snap, index_type="hnsw", batch_rows=500, bm25=False)
    assert [sum(p) for p in passes] == [2000, 2000] and max(max(p) for p in passes) <= 500  # sample, add


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,SQ8", "RR16,IVF16,PQ4x4", "IVF32_HNSW32,Flat",
                                     "HNSW16,Flat", "Flat"])
def test_storage_sized_up_front_searches_like_a_plain_add(tmp_path: Path, factory: str) -> None:
    snap, matrix = make_snapshot(tmp_path, 2000, 16)
    built = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    with single_thread():  # an OpenMP team on a busy 2-core machine costs more than it saves on this size
        built.train(matrix)
        plain = faiss.clone_index(built)
        plain.add(matrix)
        added: list[int] = []
        build._add_all(built, snap.vectors_path, 300, 2000, None, added.append, build._Timer())
    assert built.ntotal == plain.ntotal == 2000 and sum(added) == 2000
    d1, i1 = built.search(matrix[:50], 5)
    d2, i2 = plain.search(matrix[:50], 5)
    assert (i1 == i2).mean() > 0.99 and np.allclose(d1, d2, atol=1e-4)


def test_budget_too_small_is_a_clear_error(tmp_path: Path) -> None:
    snap, _ = make_snapshot(tmp_path, 200)
    with pytest.raises(IndexBuildError, match="budget"):
        build_index(snap, memory_budget_bytes=1000)


def test_too_few_vectors_to_train(tmp_path: Path) -> None:
    snap, _ = make_snapshot(tmp_path, 30)
    with pytest.raises(IndexBuildError, match="too few"):
        build_index(snap, index_type="IVF64,Flat")


def test_rows_copy_keeps_row_order_and_metadata(tmp_path: Path) -> None:
    snap, _ = make_snapshot(tmp_path, 500, row_group_size=100)
    build_index(snap, bm25=False)
    rows = build.read_index_rows(snap.index_dir)  # memory-mapped Arrow IPC
    assert rows.column("chunk_id").to_pylist() == [f"d{i}:0" for i in range(500)]
    assert "vector" not in rows.column_names
    assert b"pipeline" in (rows.schema.metadata or {})


def test_indexes_built_with_rows_parquet_still_load(tmp_path: Path) -> None:
    snap, matrix = make_snapshot(tmp_path, 300)
    build_index(snap, bm25=False)
    rows = build.read_index_rows(snap.index_dir)
    (snap.index_dir / "rows.arrow").unlink()
    pq.write_table(rows, snap.index_dir / "rows.parquet")
    index, again, _ = load_index(snap)
    assert again.column("chunk_id").to_pylist() == rows.column("chunk_id").to_pylist()
    (snap.index_dir / "rows.parquet").unlink()
    with pytest.raises(StoreError, match="rows"):
        load_index(snap)
