import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from pipeline.errors import IndexBuildError
from pipeline.index import build_index, load_index
from pipeline.records import Chunk
from pipeline.search import search_vectors
from pipeline.store import chunk_table, new_snapshot_dir, normalize_rows, write_table_atomic


def _snapshot(tmp_path: Path, n: int, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    # Clustered data, like real embeddings: uniform noise would make every ANN index look broken.
    centers = rng.normal(size=(20, dim)).astype(np.float32)
    matrix = centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    normalize_rows(matrix)
    chunks = [Chunk(chunk_id=f"d{i}:0", doc_id=f"d{i}", source_path=f"d{i}.txt", chunk_index=0, char_start=0,
                    char_end=3, text=f"t{i}", token_count=1, content_hash=f"h{i}") for i in range(n)]
    snap = new_snapshot_dir(tmp_path)
    meta = {"model": "m", "dimension": dim, "normalize": True, "fingerprint": {"model": "m", "dimension": dim}}
    write_table_atomic(chunk_table(chunks, matrix, meta), snap.vectors_path)
    return snap, matrix


def test_flat_index_finds_each_vector_itself(tmp_path: Path) -> None:
    snap, matrix = _snapshot(tmp_path, 300)
    report = build_index(snap)
    assert report.kind == "flat" and report.recall_at_10 == 1.0
    index, rows, meta = load_index(snap)
    assert faiss.read_index(str(snap.index_dir / "index.faiss")).ntotal == 300
    hits = search_vectors(index, rows, matrix[17], 3)
    assert hits[0].chunk_id == "d17:0" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert json.loads((snap.index_dir / "meta.json").read_text())["factory"] == "Flat"


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_ann_indexes_are_tuned_to_the_target_recall(tmp_path: Path, kind: str) -> None:
    # PQ training costs ~1 s per sub-quantiser here whatever the size: keep its case small.
    snap, matrix = _snapshot(tmp_path, 1000 if kind == "ivfpq" else 4000, dim=16 if kind == "ivfpq" else 32)
    report = build_index(snap, index_type=kind, target_recall=0.9)
    assert report.kind == kind
    assert report.search_param  # efSearch or nprobe was chosen
    if kind != "ivfpq":  # PQ codes of 32-d vectors cannot always reach 0.9 at any nprobe
        assert report.recall_at_10 >= 0.9
    index, rows, meta = load_index(snap)
    assert meta["search_param"] == report.search_param
    assert search_vectors(index, rows, matrix[5], 1)[0].chunk_id == "d5:0" or kind == "ivfpq"


def test_budget_too_small_is_a_clear_error(tmp_path: Path) -> None:
    snap, _ = _snapshot(tmp_path, 200)
    with pytest.raises(IndexBuildError, match="budget"):
        build_index(snap, memory_budget_bytes=1000)
