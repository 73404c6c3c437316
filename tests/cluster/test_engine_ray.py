"""The Ray engine on a real two-node cluster: the local engine's snapshot, one rate limit for every worker, a
killed worker's batch redone, a re-run that sends only what is missing; against the emulator over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

# Without the ray extra these tests are skipped; `make test-ray` sets PIPELINE_REQUIRE_RAY: there it must be there.
if os.environ.get("PIPELINE_REQUIRE_RAY"):
    import ray  # noqa: F401
else:
    pytest.importorskip("ray", reason="the ray extra is not installed (make test-ray installs it)")

from pipeline import api
from pipeline.config import Config, EngineConfig, load_config
from pipeline.emulator import EmulatorProfile, start_emulator
from pipeline.emulator.server import RunningEmulator, start_emulator_process
from pipeline.emulator.vectors import embed_texts
from pipeline.engine_ray.local_cluster import LocalCluster as Cluster
from pipeline.errors import ConfigError
from pipeline.store import current_snapshot

pytestmark = pytest.mark.ray


def _config(corpus: Path, out: Path, cache: Path, *, model: str, emu: RunningEmulator | None = None,
            engine: str = "ray", address: str = "", workers: int = 0, **embedding: Any) -> Config:
    env = {"PIPELINE_CACHE_DIR": str(cache)}
    if emu is not None:
        env.update(GIGACHAT_BASE_URL=emu.base_url, GIGACHAT_AUTH_URL=emu.auth_url, GIGACHAT_CREDENTIALS=emu.credentials)
    config = load_config(None, env=env, model=model, corpus=corpus, out_dir=out)
    return config.with_overrides(engine=EngineConfig(engine, address, workers),
                                 embedding=replace(config.embedding, **embedding))


def _snapshot(out: Path) -> tuple[Any, dict[str, Any]]:
    snap = current_snapshot(out)
    assert snap is not None
    return pq.read_table(snap.vectors_path).replace_schema_metadata(None), snap.manifest()


def _records_corpus(root: Path, files: int, per_file: int) -> Path:
    """files x per_file one-chunk documents, each text distinct."""
    root.mkdir(parents=True)
    for f in range(files):
        lines = [json.dumps({"id": f"r{i}", "text": f"Record {i} of file {f}: the sourdough starter is fed "
                                                   f"daily, batch {f * per_file + i}."}) for i in range(per_file)]
        (root / f"part-{f:03d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _embeddings(stats: dict[str, Any]) -> int:
    return int(stats["by_path"].get("/api/v1/embeddings", 0))


def _check_emulator_vectors(out: Path, model: str, expected_ids: list[str]) -> None:
    """Every expected chunk exactly once, each with the emulator's vector for its text."""
    table, _ = _snapshot(out)
    ids = table.column("chunk_id").to_pylist()
    assert len(ids) == len(set(ids)), "a chunk written twice"
    assert sorted(ids) == sorted(expected_ids)
    got = table.column("vector").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
    want = embed_texts(model, table.column("text").to_pylist())
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.abs(got - want).max() < 2e-6


@pytest.mark.parametrize(("model", "contextual"), [("Embeddings", True), ("e5-small-local", False)])
def test_the_ray_engine_writes_the_local_engines_snapshot(ray_connected: Cluster, tiny_corpus: Path,
                                                          tmp_path: Path, model: str, contextual: bool) -> None:
    with start_emulator(EmulatorProfile()) as emu:
        emulator = emu if model == "Embeddings" else None
        local_config, ray_config = (
            _config(tiny_corpus, tmp_path / engine, tmp_path / f"cache-{engine}", model=model, emu=emulator,
                    engine=engine, address=ray_connected.address) for engine in ("local", "ray"))
        # (contextual: each chunk embedded with its title and headings in front, which travel with the rows)
        local_config, ray_config = (c.with_overrides(chunking=replace(c.chunking, contextual=contextual))
                                    for c in (local_config, ray_config))
        local = api.embed(local_config)
        on_ray = api.embed(ray_config)
        assert (on_ray.engine, on_ray.workers) == ("ray", 2)
        assert on_ray.embedded == local.embedded > 0  # (separate caches: each engine embedded everything)
        for name in ("documents", "chunks", "vectors", "skipped", "diff", "files", "failed_chunks"):
            assert getattr(on_ray, name) == getattr(local, name), name
        (a, ma), (b, mb) = _snapshot(tmp_path / "local"), _snapshot(tmp_path / "ray")
        assert a.column("chunk_id").to_pylist() == b.column("chunk_id").to_pylist()
        assert a.equals(b)  # every column, vectors to the bit, in the same order
        assert ma["documents"] == mb["documents"] and ma["skipped"] == mb["skipped"]
        assert ma["fingerprint_id"] == mb["fingerprint_id"]
        for query in ("how do I create a virtual environment", "черная дыра и свет"):
            hits = [[(h.chunk_id, h.score) for h in api.search(c, query, k=3).hits] for c in (local_config, ray_config)]
            assert hits[0] == hits[1] and hits[0]


def test_two_workers_share_one_rate_limit(ray_connected: Cluster, tmp_path: Path) -> None:
    """Local engine, then two Ray workers, on the same corpus under the same server and the same configured
    limits: the workers together keep to the key's pace (>= 90 % of the server's 20 requests/s while they
    send) and draw no more 429s than the one local process."""
    rps, in_flight = 20, 4
    # 2000 texts: 400 requests of 5, 20 s a run, so the workers' start and last short requests weigh little
    corpus = _records_corpus(tmp_path / "corpus", files=40, per_file=50)
    profile = EmulatorProfile(base_latency_ms=100, per_text_latency_ms=2, max_concurrency=in_flight, rps=rps)
    limits = {"concurrency": in_flight, "requests_per_minute": rps * 60, "batch_size": 5}
    seen: dict[str, dict[str, Any]] = {}
    with start_emulator_process(profile) as emu:
        for engine in ("local", "ray"):
            time.sleep(1.5)  # the server's bucket refills: both runs start alike
            emu.reset_stats()
            report = api.embed(_config(corpus, tmp_path / f"out-{engine}", tmp_path / f"cache-{engine}",
                                       model="Embeddings", emu=emu, engine=engine, address=ray_connected.address,
                                       workers=2, **limits))
            assert report.failed_chunks == 0 and report.embedded == 2000
            seen[engine] = {**emu.stats(), "workers": report.workers}
    for engine, stats in seen.items():
        sent = _embeddings(stats) - stats["status_counts"].get("429", 0)
        assert sent >= 400, engine  # (a worker's batch of documents may end in a short request)
        calls_s = stats["last_call_done_at"] - stats["first_call_at"]
        assert sent / calls_s >= 0.9 * rps, f"{engine}: {sent / calls_s:.1f} requests/s"
        assert stats["peak_in_flight"] <= in_flight
    assert seen["ray"]["workers"] == 2
    assert seen["ray"]["tokens_issued"] == 2  # both workers sent, each with its own provider and token
    assert seen["ray"]["status_counts"].get("429", 0) <= seen["local"]["status_counts"].get("429", 0)


def test_a_killed_worker_loses_no_chunk_and_doubles_none_and_a_rerun_sends_only_what_is_missing(
        ray_connected: Cluster, tmp_path: Path) -> None:
    corpus = _records_corpus(tmp_path / "corpus", files=12, per_file=50)  # 600 texts, 120 requests at 15/s
    out, cache = tmp_path / "out", tmp_path / "cache"
    with start_emulator_process(EmulatorProfile(base_latency_ms=50, rps=15)) as emu:
        config = _config(corpus, out, cache, model="Embeddings", emu=emu, address=ray_connected.address, workers=2,
                         batch_size=5, requests_per_minute=900)
        result: list[Any] = []
        run = threading.Thread(target=lambda: result.append(_outcome(config)), daemon=True)
        run.start()
        deadline = time.monotonic() + 180
        while _embeddings(emu.stats()) < 25:
            assert run.is_alive() and time.monotonic() < deadline, "the run ended before a worker could be killed"
            time.sleep(0.2)
        victims = ray_connected.embed_worker_pids()
        assert victims
        os.kill(victims[0], signal.SIGKILL)
        run.join(timeout=240)
        assert not run.is_alive()
        report = result[0]
        assert not isinstance(report, BaseException), report
        assert report.failed_chunks == 0 and report.vectors == 600
        assert victims[0] not in ray_connected.embed_worker_pids()
        _check_emulator_vectors(out, "Embeddings", [c.chunk_id for c in api.chunk_corpus(config, corpus)])

        # The same corpus with one record edited and one file added, through the command line: only those two
        # texts are sent; every other chunk comes from the cache or, its file unchanged, is not even read.
        before = emu.stats()["texts_embedded"]
        edited = corpus / "part-001.jsonl"
        lines = edited.read_text(encoding="utf-8").splitlines()
        lines[3] = json.dumps({"id": "r3", "text": "An edited record: espresso is brewed under pressure."})
        edited.write_text("\n".join(lines) + "\n", encoding="utf-8")
        (corpus / "new.md").write_text("# New\n\nA black hole is a region of spacetime.\n", encoding="utf-8")
        env = {"PIPELINE_CACHE_DIR": str(cache), "GIGACHAT_BASE_URL": emu.base_url,
               "GIGACHAT_AUTH_URL": emu.auth_url, "GIGACHAT_CREDENTIALS": emu.credentials}
        rerun = _cli("reindex", str(corpus), "--out", str(out), "--model", "Embeddings", "--engine", "ray",
                     "--ray-address", ray_connected.address, "--no-progress", "--json", env=env)
        assert rerun.returncode == 0, rerun.stderr
        assert emu.stats()["texts_embedded"] - before == 2
    again = json.loads(rerun.stdout)
    assert again["diff"] == {"added": 1, "changed": 1, "deleted": 0, "unchanged": 599}
    assert (again["embedded"], again["engine"], again["workers"], again["unread"]) == (2, "ray", 2, 11)
    assert emu.credentials not in rerun.stderr + rerun.stdout
    _check_emulator_vectors(out, "Embeddings", [c.chunk_id for c in api.chunk_corpus(config, corpus)])


def _outcome(config: Config) -> Any:
    try:
        return api.embed(config)
    except BaseException as e:  # noqa: BLE001 - handed to the test's thread
        return e


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=240)


def test_bad_cluster_settings_are_one_line_and_exit_2(ray_connected: Cluster, tiny_corpus: Path,
                                                      tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--ray-workers 5: the cluster has 2 CPUs"):
        api.embed(_config(tiny_corpus, tmp_path / "out", tmp_path / "cache", model="e5-small-local",
                          address=ray_connected.address, workers=5))
    with socket_closed() as port:
        result = _cli("embed", str(tiny_corpus), "--out", str(tmp_path / "out"), "--engine", "ray",
                      "--ray-address", f"127.0.0.1:{port}", "--no-progress", env={})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --ray-address 127.0.0.1:{port}: no Ray cluster answers there (Connection refused)"]


class socket_closed:
    """A port nothing listens on (bound, never listening, while the block runs)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
