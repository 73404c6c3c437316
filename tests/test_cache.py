"""The vector cache: batch lookups, one transaction per put (kill -9), checksums, migration, prune, threads."""

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import api
from pipeline.cache import VectorCache, cache_stats
from pipeline.errors import StoreError
from pipeline.store import current_snapshot, write_table_atomic


def _raw(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, dim)) * 7).astype(np.float32)


def test_batch_lookups_answer_like_the_per_hash_ones(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path, "m", 5)
    raw = _raw(2000, 5)  # over the 900 hashes of one `IN (...)`
    keys = [f"h{i}" for i in range(2000)]
    cache.put(keys[:1500], raw[:1500])
    asked = ["new", *keys[1400:1600], "new", "h0"]
    assert cache.missing(asked) == ["new", *keys[1500:1600]]  # distinct, in first-seen order
    assert cache.missing([]) == []
    assert "h1499" in cache and "h1500" not in cache and len(cache) == 1500
    np.testing.assert_array_equal(cache.get_many(keys[:1500][::-1]), raw[:1500][::-1])
    with pytest.raises(StoreError, match="h1500"):
        cache.get_many(["h1", "h1500"])
    assert (tmp_path / "vectors" / "m.sqlite3").is_file()
    db = sqlite3.connect(tmp_path / "vectors" / "m.sqlite3")
    blob = db.execute("SELECT vector FROM vectors WHERE hash = 'h3'").fetchone()[0]
    assert np.frombuffer(blob, "<f4").tolist() == raw[3].tolist()  # raw little-endian float32, readable by anyone


def test_lookups_in_a_fresh_cache_create_no_file(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path, "m", 4)  # what `embed --plan` does: it writes nothing
    assert cache.missing(["a", "b", "a"]) == ["a", "b"] and "a" not in cache and len(cache) == 0
    assert cache.get_many([]).shape == (0, 4)
    with pytest.raises(StoreError):
        cache.get_many(["a"])
    assert not (tmp_path / "vectors").exists()
    cache.put(["a"], np.ones((1, 4), np.float32))
    assert (tmp_path / "vectors" / "m.sqlite3").is_file() and cache.missing(["a", "b"]) == ["b"]


def test_normalised_reads_leave_the_stored_vectors_raw(tmp_path: Path) -> None:
    raw = _raw(4, 3)
    raw[1] = 0
    unit = VectorCache(tmp_path, "m", 3, normalize=True)
    unit.put(["a", "b", "c", "d"], raw)
    np.testing.assert_allclose(np.linalg.norm(unit.get_many(["a", "c", "d"]), axis=1), 1, atol=1e-6)
    assert unit.get_many(["b"]).tolist() == [[0, 0, 0]]
    np.testing.assert_array_equal(VectorCache(tmp_path, "m", 3).get_many(["a", "d"]), raw[[0, 3]])


@pytest.mark.parametrize("damage", [
    "UPDATE vectors SET vector = zeroblob(16) WHERE hash = 'b'",  # flipped bytes: the crc no longer matches
    "UPDATE vectors SET vector = substr(vector, 1, 8) WHERE hash = 'b'",  # short
    "UPDATE vectors SET vector = zeroblob(20), crc = 0 WHERE hash = 'b'",  # wrong dimension (5 floats)
])
def test_a_corrupt_entry_is_reported_and_embedded_again(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        damage: str) -> None:
    raw = _raw(3, 4)
    VectorCache(tmp_path, "m", 4).put(["a", "b", "c"], raw)
    db = sqlite3.connect(tmp_path / "vectors" / "m.sqlite3")
    with db:
        db.execute(damage)
    db.close()
    cache = VectorCache(tmp_path, "m", 4)
    with caplog.at_level(logging.WARNING, logger="pipeline.cache"):
        assert cache.missing(["a", "b", "c"]) == ["b"]
    assert cache.corrupt == 1 and "b is corrupt" in caplog.text
    assert "b" not in cache
    with pytest.raises(StoreError):
        cache.get_many(["b"])  # never used
    cache.put(["b"], raw[1:2])  # what the next embedding does: overwritten
    assert VectorCache(tmp_path, "m", 4).missing(["a", "b", "c"]) == []
    np.testing.assert_array_equal(cache.get_many(["c", "b", "a"]), raw[::-1])


_WRITER = """
import sys
import numpy as np
from pathlib import Path
from pipeline.cache import VectorCache

cache = VectorCache(Path(sys.argv[1]), "m", 1024)
rng = np.random.default_rng(0)
for b in range(10_000):
    cache.put([f"b{b}-{i}" for i in range(200)], rng.normal(size=(200, 1024)).astype(np.float32))
    print(b, flush=True)
"""


def test_kill_9_mid_write_keeps_every_committed_batch_and_no_half_one(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    committed = -1
    deadline = time.monotonic() + 60
    while committed < 5 and time.monotonic() < deadline:
        committed = int(child.stdout.readline())
    time.sleep(0.013)  # land inside a later put (each takes a few ms)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    for line in child.stdout:  # batches reported between the read above and the kill
        committed = int(line)
    assert child.returncode == -signal.SIGKILL and committed >= 5
    cache = VectorCache(tmp_path, "m", 1024)
    hashes = [h for (h,) in sqlite3.connect(tmp_path / "vectors" / "m.sqlite3").execute("SELECT hash FROM vectors")]
    per_batch: dict[int, int] = {}
    for h in hashes:
        batch = int(h[1:].split("-")[0])
        per_batch[batch] = per_batch.get(batch, 0) + 1
    assert set(per_batch.values()) == {200}  # none half
    assert set(range(committed + 1)) <= set(per_batch)  # every committed one
    assert max(per_batch) <= committed + 1
    assert cache.missing(hashes) == [] and cache.corrupt == 0


def _old_put(root: Path, key: str, hashes: list[str], matrix: np.ndarray, name: str) -> None:
    """What the Parquet-parts VectorCache.put wrote (pipeline/store.py before the SQLite cache)."""
    flat = pa.array(np.ascontiguousarray(matrix, np.float32).reshape(-1), type=pa.float32())
    table = pa.table({"content_hash": pa.array(hashes, pa.string()),
                      "vector": pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])})
    write_table_atomic(table, root / "vectors" / key / f"part-{name}.parquet")


def test_an_old_parquet_parts_cache_is_imported_bit_identical_then_removed(tmp_path: Path) -> None:
    raw = _raw(300, 16, seed=5)
    raw[0, 0] = np.float32(-0.0)
    raw[1, 1] = np.float32(1e-45)  # a subnormal
    keys = [f"k{i}" for i in range(300)]
    for n, (a, b) in enumerate(((0, 100), (100, 101), (101, 300))):
        _old_put(tmp_path, "m", keys[a:b], raw[a:b], f"{n:020d}-abcdef")
    _old_put(tmp_path, "m", ["other-dim"], np.ones((1, 3), np.float32), f"{9:020d}-aaaaaa")  # skipped, as before
    (tmp_path / "vectors" / "m" / "part-x.parquet").write_bytes(b"not parquet")  # skipped, as before
    stats = cache_stats(tmp_path)
    assert [(s.key, s.format, s.entries) for s in stats] == [("m", "parquet-parts", 301)]  # listed, not imported

    cache = VectorCache(tmp_path, "m", 16)
    assert not (tmp_path / "vectors" / "m").exists()
    assert len(cache) == 300 and cache.missing(keys) == [] and "other-dim" not in cache
    got = cache.get_many(keys)
    assert got.tobytes() == raw.tobytes()  # bit-identical, -0.0 and the subnormal included
    assert [(s.key, s.format, s.entries, s.dimension) for s in cache_stats(tmp_path)] == [("m", "sqlite", 300, 16)]
    assert len(VectorCache(tmp_path, "m", 16)) == 300  # a second open imports nothing


def test_threads_put_and_look_up_at_once(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path, "m", 8)
    raw = _raw(4000, 8)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for b in range(w * 1000, (w + 1) * 1000, 50):
                cache.put([f"h{i}" for i in range(b, b + 50)], raw[b:b + 50])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def reader() -> None:
        try:
            for _ in range(200):
                present = [f"h{i}" for i in range(4000) if i % 7 == 0]
                have = [h for h in present if h not in set(cache.missing(present))]
                if have:
                    idx = [int(h[1:]) for h in have]
                    np.testing.assert_array_equal(cache.get_many(have), raw[idx])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) == 4000


def test_prune_keeps_what_live_snapshots_use_and_other_models_alone(tiny_corpus: Path, config_for,
                                                                     tmp_path: Path) -> None:
    config = config_for(tiny_corpus)
    report = api.embed(config, build=False)
    from pipeline.run_context import RunContext

    key = RunContext.open(config, config.model_spec()).cache_key
    dim = config.model_spec().dimension
    live = VectorCache(config.cache_dir, key, dim)
    assert len(live) == report.chunks
    live.put([f"stale{i}" for i in range(500)], _raw(500, dim))
    other = VectorCache(config.cache_dir, "another-model", 4)
    other.put(["x"], np.ones((1, 4), np.float32))

    dry = api.prune_cache(config, dry_run=True)
    assert dry.removed == 500 and len(VectorCache(config.cache_dir, key, dim)) == report.chunks + 500
    pruned = api.prune_cache(config)
    assert [(r.key, r.removed, r.kept) for r in pruned.results] == [(key, 500, report.chunks)]
    assert pruned.untouched_keys == ["another-model"]
    assert pruned.bytes_freed > 500 * dim * 4 * 0.9  # VACUUM gave the pages back
    assert VectorCache(config.cache_dir, key, dim).missing(
        [c.content_hash for c in api.chunk_corpus(config, tiny_corpus)]) == []
    assert len(VectorCache(config.cache_dir, "another-model", 4)) == 1
    assert api.embed(config, build=False).embedded == 0  # nothing live was lost
    with pytest.raises(StoreError, match="nothing embedded"):
        api.prune_cache(config, [tmp_path / "nowhere"])


def test_cache_commands(tiny_corpus: Path, config_for, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    config = config_for(tiny_corpus)
    api.embed(config, build=False)
    runner = CliRunner()
    stats = json.loads(runner.invoke(cli, ["cache", "stats", "--json"], catch_exceptions=False).output)
    assert stats["cache_dir"] == str(config.cache_dir)
    [entry] = stats["keys"]
    assert entry["entries"] == pq.ParquetFile(current_snapshot(config.out_dir).vectors_path).metadata.num_rows
    assert entry["file_bytes"] > entry["vector_bytes"] > 0 and entry["format"] == "sqlite"
    text = runner.invoke(cli, ["cache", "prune", "--out", str(config.out_dir)], catch_exceptions=False).output
    assert "removed 0 vectors" in text and f"kept {entry['entries']}" in text
    pruned = json.loads(runner.invoke(cli, ["cache", "prune", "--out", str(config.out_dir), "--out",
                                            str(config.out_dir), "--json"], catch_exceptions=False).output)
    assert pruned["removed"] == 0 and pruned["results"][0]["kept"] == entry["entries"]
