"""The sharded index build on a real two-node Ray cluster: the same index, files and search as build_index.

Synthetic clustered vectors written as real snapshots with the store's functions; the CLI test embeds a corpus
through the GigaChat emulator (real HTTP) and searches both builds with `pipeline search`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

from pipeline.emulator import EmulatorProfile, start_emulator  # noqa: E402
from pipeline.index import build_index, load_index  # noqa: E402
from pipeline.index.files import INDEX_FILE, SHARDS_DIR  # noqa: E402
from pipeline.index.sharded import build_index_sharded  # noqa: E402
from pipeline.records import Chunk  # noqa: E402
from pipeline.store import Snapshot, chunk_table, normalize_rows, write_table_atomic  # noqa: E402

pytestmark = pytest.mark.ray

N, DIM = 4000, 32


def _clustered(n: int, dim: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    noise = 0.4 * rng.normal(size=(n, dim)).astype(np.float32)
    return normalize_rows(centers[rng.integers(0, clusters, n)] + noise)


def _snapshot(path: Path, matrix: np.ndarray, row_group_size: int | None) -> Snapshot:
    """A snapshot directory holding vectors.parquet as the store writes it (or in row groups of that size)."""
    snap = Snapshot(path)
    path.mkdir(parents=True)
    chunks = [Chunk(chunk_id=f"d{i}:0", doc_id=f"d{i}", source_path=f"d{i}.txt", chunk_index=0, char_start=0,
                    char_end=3, text=f"t{i}", token_count=1, content_hash=f"h{i}", doc_type="txt")
              for i in range(len(matrix))]
    fingerprint = {"model": "m", "dimension": DIM}
    meta = {"model": "m", "dimension": DIM, "normalize": True, "fingerprint": fingerprint}
    table = chunk_table(chunks, matrix, meta)
    if row_group_size:
        pq.write_table(table, snap.vectors_path, row_group_size=row_group_size)
    else:
        write_table_atomic(table, snap.vectors_path)  # one row group: shards cut inside it
    return snap


def _lists(index: faiss.Index) -> list[np.ndarray]:
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    return [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy() for i in range(ivf.nlist)]


@pytest.fixture(scope="module")
def matrix() -> np.ndarray:
    return _clustered(N, DIM)


@pytest.mark.parametrize(("factory", "row_group_size", "shards"),
                         [("IVF32,Flat", 500, 3), ("IVF32,SQ8", None, 2)])
def test_sharded_build_is_the_single_process_index(tmp_path: Path, ray_address: str, matrix: np.ndarray,
                                                  factory: str, row_group_size: int | None,
                                                  shards: int) -> None:
    single = _snapshot(tmp_path / "single", matrix, row_group_size)
    sharded = _snapshot(tmp_path / "sharded", matrix, row_group_size)
    one = build_index(single, index_type=factory, target_recall=0.9, bm25=False)
    added: list[int] = []
    rep = build_index_sharded(sharded, ray_address=ray_address, shards=shards, index_type=factory,
                              target_recall=0.9, bm25=False, progress=added.append)

    assert rep.mode_reason.startswith(f"sharded: {shards} Ray tasks on 2 node(s)")  # both nodes took a task
    assert len(added) == shards and sum(added) == N  # one progress step a shard
    assert {"sample", "train", "shards", "merge", "tune", "save"} <= set(rep.seconds)
    # the same choice, trained quantizer, tuned search parameter and measured recall
    for key in ("factory", "kind", "vectors", "dimension", "metric", "search_param", "recall_at_10", "tuning",
                "recall_queries", "id_layout", "built_vectors"):
        assert getattr(rep, key) == getattr(one, key), key
    assert not (sharded.index_dir / SHARDS_DIR).exists()
    assert {p.name for p in sharded.index_dir.iterdir()} == {p.name for p in single.index_dir.iterdir()}

    a, rows_a, meta_a = load_index(single)  # as search loads them
    b, rows_b, meta_b = load_index(sharded)
    assert b.ntotal == N and rows_b.num_rows == N and meta_b["search_param"] == meta_a["search_param"]
    lists_a, lists_b = _lists(a), _lists(b)
    assert np.array_equal(np.sort(np.concatenate(lists_b)), np.arange(N))  # every row exactly once
    assert all(np.array_equal(x, y) for x, y in zip(lists_a, lists_b, strict=True))  # same lists, same order
    quantizer_a = faiss.downcast_index(faiss.extract_index_ivf(a).quantizer)
    quantizer_b = faiss.downcast_index(faiss.extract_index_ivf(b).quantizer)
    assert np.array_equal(faiss.vector_to_array(quantizer_a.codes), faiss.vector_to_array(quantizer_b.codes))
    queries = _clustered(100, DIM, seed=7)
    for nprobe in (1, 4, 32):
        faiss.extract_index_ivf(a).nprobe = faiss.extract_index_ivf(b).nprobe = nprobe
        (da, ia), (db, ib) = a.search(queries, 10), b.search(queries, 10)
        assert np.array_equal(ia, ib) and np.allclose(da, db, atol=1e-6)
    if row_group_size is None:  # one row group: same codes, same ids in the same order, so the same file
        assert (single.index_dir / INDEX_FILE).read_bytes() == (sharded.index_dir / INDEX_FILE).read_bytes()


def test_a_graph_or_exact_choice_is_built_in_this_process(tmp_path: Path, ray_address: str,
                                                           matrix: np.ndarray) -> None:
    snap = _snapshot(tmp_path / "s", matrix[:1000], None)
    report = build_index_sharded(snap, ray_address=ray_address, bm25=False)
    assert report.kind == "flat" and report.mode_reason == "" and "shards" not in report.seconds
    assert load_index(snap)[0].ntotal == 1000


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=240)


def test_pipeline_index_engine_ray_then_pipeline_search(tmp_path: Path, ray_address: str) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    topics = ["bread", "metro", "python", "coffee", "stars", "rivers", "chess", "tea"]
    with open(corpus / "notes.jsonl", "w", encoding="utf-8") as f:
        for i in range(2000):
            text = f"note {i} about {topics[i % 8]} and {topics[i % 5]}"
            f.write(json.dumps({"id": f"n{i}", "text": text}) + "\n")
    out = str(tmp_path / "out")
    with start_emulator(EmulatorProfile()) as emu:
        env = {"GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
               "GIGACHAT_CREDENTIALS": emu.credentials, "RAY_ADDRESS": ""}
        embedded = _cli("embed", str(corpus), "--no-index", "--out", out, "--no-progress", env=env)
        assert embedded.returncode == 0, embedded.stderr
        results = {}
        for engine in ("local", "ray"):
            built = _cli("index", "--out", out, "--index-type", "ivf", "--engine", engine, "--ray-address",
                         ray_address, "--json", env=env)
            assert built.returncode == 0, built.stderr
            report = json.loads(built.stdout)  # nothing from the Ray tasks on stdout
            assert report["vectors"] == 2000
            assert report["mode_reason"].startswith("sharded") == (engine == "ray")
            found = _cli("search", "note about chess and tea", "-k", "5", "--json", "--out", out, env=env)
            assert found.returncode == 0, found.stderr
            hits = json.loads(found.stdout)["hits"]
            results[engine] = [(h["chunk_id"], round(h["score"], 5)) for h in hits]
        assert len(results["ray"]) == 5 and results["ray"] == results["local"]
        bad = _cli("index", "--out", out, "--engine", "ray", "--ray-address", "127.0.0.1:1", "--json",
                   env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --ray-address 127.0.0.1:1: ")
    assert bad.stderr.count("\n") == 1
