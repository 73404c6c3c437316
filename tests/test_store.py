import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import StoreError
from pipeline.records import Chunk
from pipeline.store import (
    META_KEY,
    VectorCache,
    chunk_table,
    current_snapshot,
    iter_vector_batches,
    new_snapshot_dir,
    normalize_rows,
    publish_snapshot,
    read_rows,
    write_table_atomic,
)


def _chunks(n: int) -> list[Chunk]:
    return [Chunk(chunk_id=f"d{i}:0", doc_id=f"d{i}", source_path=f"d{i}.txt", chunk_index=0, char_start=0,
                  char_end=5, text=f"text {i}", token_count=3, content_hash=f"h{i}", doc_type="txt",
                  metadata={"lang": "ru"} if i == 0 else {}) for i in range(n)]


def test_parquet_schema_is_readable_without_this_project(tmp_path: Path) -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "v.parquet"
    write_table_atomic(chunk_table(_chunks(3), matrix, {"model": "m", "dimension": 4}), path)
    table = pq.read_table(path)
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 4)
    assert table.column("chunk_id").to_pylist() == ["d0:0", "d1:0", "d2:0"]
    assert json.loads(table.schema.metadata[META_KEY])["model"] == "m"
    vectors = np.concatenate(list(iter_vector_batches(path, 2)))  # two batches: 2 rows, then 1
    np.testing.assert_array_equal(vectors, matrix)
    assert read_rows(path).column_names[-1] == "metadata"
    assert json.loads(read_rows(path).column("metadata")[0].as_py()) == {"lang": "ru"}


def test_vector_count_must_match_chunks() -> None:
    with pytest.raises(StoreError):
        chunk_table(_chunks(2), np.zeros((3, 4), np.float32), {})


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "v.parquet"
    write_table_atomic(chunk_table(_chunks(1), np.ones((1, 2), np.float32), {}), path)
    with pytest.raises(AttributeError):  # not a table: pyarrow fails before anything is renamed
        write_table_atomic("not a table", path)  # type: ignore[arg-type]
    assert pq.read_table(path).num_rows == 1
    assert [p.name for p in tmp_path.iterdir()] == ["v.parquet"]


def test_normalize_rows_keeps_zero_rows() -> None:
    m = np.array([[3, 4], [0, 0]], dtype=np.float32)
    normalize_rows(m)
    np.testing.assert_allclose(m, [[0.6, 0.8], [0, 0]])


def test_snapshots_publish_atomically_and_old_ones_are_pruned(tmp_path: Path) -> None:
    assert current_snapshot(tmp_path) is None
    made, previous = [], None
    for _ in range(4):
        snap = new_snapshot_dir(tmp_path)
        (snap.path / "marker").write_text("x")
        new_snapshot_dir(tmp_path)  # a crashed run's unpublished leftover
        publish_snapshot(tmp_path, snap, previous=previous)
        made.append(snap.path.name)
        previous = current_snapshot(tmp_path)
        assert previous.path.name == snap.path.name
    left = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert left == sorted(made[-2:])


def test_cache_gathers_across_blocks_and_normalises_in_memory_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(50, 4)).astype(np.float32) * 5
    raw[7] = 0  # a zero row stays zero
    keys = [f"k{i}" for i in range(50)]
    unit = VectorCache(tmp_path, "m", 4, normalize=True)
    for a, b in ((0, 13), (13, 14), (14, 40), (40, 50)):
        unit.put(keys[a:b], raw[a:b])
    pick = [int(i) for i in rng.permutation(50)[:30]] + [7, 7]
    got = unit.get_many([keys[i] for i in pick])
    norms = np.linalg.norm(raw[pick], axis=1, keepdims=True)
    np.testing.assert_allclose(got, np.divide(raw[pick], norms, where=norms > 0, out=np.zeros_like(got)), atol=1e-6)
    files = VectorCache(tmp_path, "m", 4)  # the part files hold the service's raw vectors
    np.testing.assert_array_equal(files.get_many([keys[i] for i in pick]), raw[pick])
    assert unit.get_many([]).shape == (0, 4)


def test_cache_persists_across_instances_and_ignores_other_dimensions(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path, "model-a", 3)
    cache.put(["a", "b"], np.array([[1, 2, 3], [4, 5, 6]], np.float32))
    cache.put(["c"], np.array([[7, 8, 9]], np.float32))
    again = VectorCache(tmp_path, "model-a", 3)
    assert len(again) == 3 and "b" in again and "z" not in again
    np.testing.assert_array_equal(again.get_many(["c", "a"]), [[7, 8, 9], [1, 2, 3]])
    assert len(VectorCache(tmp_path, "model-b", 3)) == 0
    with pytest.raises(StoreError):
        cache.put(["x"], np.zeros((1, 4), np.float32))
