"""Fault injection through the GigaChat emulator (real HTTP): every run must end with each chunk embedded once.

429 storms, 500s, token expiry, timeouts, dropped connections, wrong counts and dimensions, 413s, kill -9.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from pipeline import api, run
from pipeline.config import Config, EmbeddingConfig, load_config
from pipeline.emulator import EmulatorProfile, start_emulator
from pipeline.emulator.vectors import embed_texts
from pipeline.snapshot_stream import SnapshotStream
from pipeline.store import current_snapshot

MODEL = "Embeddings"
_EN = "the river city model vector server request batch token answer green quiet market paper window"
_RU = "город река модель вектор сервер запрос пакет ответ зелёный тихий рынок бумага окно двигатель сад"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """240 short passages (one chunk each), English and Russian, in one .jsonl file."""
    rng = random.Random(5)
    path = tmp_path / "corpus.jsonl"
    with path.open("wb") as f:
        for i in range(240):
            words = (_EN if i % 2 else _RU).split()
            text = f"passage {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(12, 40)))
            f.write(orjson.dumps({"id": f"p{i}", "text": text}) + b"\n")
    return path


def _config(emu: Any, corpus: Path, out: Path, cache: Path, *, timeout_s: float = 10.0, **embedding: Any) -> Config:
    env = {"GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
           "GIGACHAT_CREDENTIALS": emu.credentials, "PIPELINE_CACHE_DIR": str(cache)}
    config = load_config(None, env=env, corpus=corpus, out_dir=out, model=MODEL)
    return replace(config, embedding=replace(EmbeddingConfig(), **embedding),
                   gigachat=replace(config.gigachat, timeout_s=timeout_s))


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait milliseconds, not seconds: the policy is under test here, not the clock."""
    import pipeline.embedding as embedding

    async def quick(*args: Any, **kw: Any) -> Any:
        return await embedding.embed_items(*args, **{**kw, "backoff_initial_s": 0.01, "backoff_max_s": 0.05})

    monkeypatch.setattr(run, "embed_items", quick)


def _embed(config: Config) -> api.EmbedReport:
    return api.embed(config, build=False)


def _assert_each_chunk_once(config: Config) -> int:
    """The live snapshot holds every chunk of the corpus once, each with the emulator's vector for its text."""
    table = pq.read_table(current_snapshot(config.out_dir).vectors_path, columns=["chunk_id", "text", "vector"])
    ids = table.column("chunk_id").to_pylist()
    expected = [c.chunk_id for c in api.chunk_corpus(config, config.corpus)]
    assert len(ids) == len(set(ids)), "a chunk appears twice"
    assert sorted(ids) == sorted(expected)
    texts = table.column("text").to_pylist()
    got = table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(ids), -1)
    want = embed_texts(MODEL, texts)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)  # never a neighbour's vector
    return len(ids)


def _profile(**kw: Any) -> EmulatorProfile:
    return EmulatorProfile(seed=3, **kw)


@pytest.mark.parametrize("knobs", [
    {"rps": 10.0},  # rate limit: 429 + Retry-After; the pacer learns the pace (16 in flight at once outrun it
    # however loaded the machine: at 20/s and 8 in flight a busy machine stayed under the limit)
    {"max_concurrency": 2},  # concurrency limit: 429 without Retry-After; in-flight shrinks to fit
], ids=["rate", "concurrency"])
def test_429_storm(corpus: Path, tmp_path: Path, knobs: dict[str, Any]) -> None:
    with start_emulator(_profile(base_latency_ms=20, **knobs)) as emu:
        config = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", batch_size=5, concurrency=16)
        report = _embed(config)
        seen = emu.stats()["status_counts"]
    assert report.exit_code == 0 and report.failed_chunks == 0
    assert seen.get("429", 0) > 0 and report.errors.get("RateLimitError", 0) == seen["429"]
    assert report.embedded == _assert_each_chunk_once(config)


def test_server_errors_are_retried(corpus: Path, tmp_path: Path) -> None:
    with start_emulator(_profile(error_rate=0.3)) as emu:
        config = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", batch_size=8, max_attempts=8)
        report = _embed(config)
        seen = emu.stats()["status_counts"]
    assert seen.get("500", 0) > 5 and report.failed_chunks == 0
    _assert_each_chunk_once(config)


def test_token_expiry_mid_run(corpus: Path, tmp_path: Path) -> None:
    with start_emulator(_profile(token_ttl_s=0.4, base_latency_ms=10)) as emu:
        config = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", batch_size=5, concurrency=4)
        calls = 0

        def progress(label: str, total: int | None) -> Callable[[int], None]:
            def advance(n: int) -> None:
                nonlocal calls
                calls += 1
                if label == "embed" and calls % 10 == 0:
                    emu.expire_tokens()  # every token dies at once: the next calls get 401 and refresh

            return advance

        report = api.embed(config, build=False, progress=progress)
        stats = emu.stats()
    assert report.failed_chunks == 0
    assert stats["status_counts"].get("401", 0) > 0 and stats["tokens_issued"] > 3
    _assert_each_chunk_once(config)


def test_slow_responses_time_out_and_are_retried(corpus: Path, tmp_path: Path) -> None:
    # Latency is uniform in [50, 450] ms; past 0.35 s the client gives up: about a quarter of calls time out.
    with start_emulator(_profile(base_latency_ms=50, latency_jitter_ms=400)) as emu:
        config = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", timeout_s=0.35, batch_size=12,
                         concurrency=8)
        report = _embed(config)
    assert report.errors.get("NetworkError", 0) > 0 and report.failed_chunks == 0
    _assert_each_chunk_once(config)


def test_connections_dropped_mid_response(corpus: Path, tmp_path: Path) -> None:
    with start_emulator(_profile(drop_rate=0.3)) as emu:
        config = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", batch_size=8)
        report = _embed(config)
        dropped = emu.stats()["connections_dropped"]
    assert dropped > 3 and report.errors.get("NetworkError", 0) >= dropped and report.failed_chunks == 0
    _assert_each_chunk_once(config)


def test_wrong_count_is_retried_never_shifted(corpus: Path, tmp_path: Path) -> None:
    with start_emulator(_profile(wrong_count_rate=0.3)) as emu:
        config = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", batch_size=8)
        report = _embed(config)
        wrong = emu.stats()["wrong_counts"]
    assert wrong > 3 and report.errors.get("BadResponseError", 0) == wrong and report.failed_chunks == 0
    _assert_each_chunk_once(config)


def test_wrong_dimension_fails_fast_then_a_fixed_run_completes(corpus: Path, tmp_path: Path) -> None:
    with start_emulator(_profile()) as emu:
        good = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", batch_size=8, concurrency=2)
        bad_spec = replace(good.registry[MODEL], dimension=768)  # the registry disagrees with the service
        bad = replace(good, registry={**good.registry, MODEL: bad_spec}, out_dir=tmp_path / "out-bad")
        report = _embed(bad)
        sent_bad = emu.stats()["requests"]
        assert report.exit_code == 1 and report.failed_chunks == 240 and report.vectors == 0  # nothing embedded: an error, not "partial" (issue 17)
        assert any("768" in reason for reason in report.failure_reasons)
        assert sent_bad < 80  # stopped after a few failed batches instead of trying all 30 six times
        fixed = _embed(good)
    assert fixed.exit_code == 0 and fixed.embedded == 240
    _assert_each_chunk_once(good)


def test_too_many_texts_teaches_the_batch_size(corpus: Path, tmp_path: Path) -> None:
    with start_emulator(_profile(max_texts_per_request=7)) as emu:
        config = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", concurrency=2)  # batches of 100
        report = _embed(config)
        seen = emu.stats()["status_counts"]
    assert report.failed_chunks == 0
    assert seen.get("413", 0) <= 10  # a binary search, not a halving of every batch
    assert seen["200"] <= 240 // 7 + 6  # almost every request carries the 7 the server takes
    _assert_each_chunk_once(config)


def _cached_hashes(cache: Path) -> set[str]:
    """The hashes committed to the vector cache's databases (read-only: the child may still be writing)."""
    hashes: set[str] = set()
    for path in cache.glob("vectors/*.sqlite3"):
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                hashes.update(h for (h,) in db.execute("SELECT hash FROM vectors"))
            finally:
                db.close()
        except sqlite3.OperationalError:  # not created yet
            continue
    return hashes


def test_kill_9_mid_run_then_rerun_sends_only_the_rest(corpus: Path, tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    slow = tmp_path / "slow.toml"
    slow.write_text("[embedding]\nconcurrency = 2\n", encoding="utf-8")  # 20 rounds of 100 ms: time to aim
    with start_emulator(_profile(base_latency_ms=100)) as emu:
        env = {**os.environ, "GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
               "GIGACHAT_CREDENTIALS": emu.credentials, "PIPELINE_CACHE_DIR": str(cache)}
        child = subprocess.Popen([sys.executable, "-m", "pipeline", "embed", str(corpus), "--out", str(out),
                                  "--model", MODEL, "--config", str(slow), "--batch-size", "6", "--no-index",
                                  "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(_cached_hashes(cache)) < 3 * 6 and child.poll() is None and time.monotonic() < deadline:  # 3 batches
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        done = _cached_hashes(cache)
        assert 0 < len(done) < 240, "the kill should land mid-run"
        assert current_snapshot(out) is None  # nothing half-published
        emu.reset_stats()
        config = _config(emu, corpus, out, cache)
        report = api.embed(config, build=False)
        sent = emu.stats()["texts_embedded"]
    assert report.exit_code == 0 and report.cached == len(done)
    assert sent == report.embedded == 240 - len(done)  # only what no part file held
    assert _assert_each_chunk_once(config) == 240


def test_plan_sends_nothing_and_counts_what_the_cache_saves(corpus: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    with start_emulator(_profile()) as emu:
        config = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", requests_per_minute=600)
        before = api.plan(config, latency_ms=200)
        assert emu.stats()["requests"] == 0  # planning spends nothing
        assert (before.chunks, before.cache_hits, before.texts_to_send, before.requests) == (240, 0, 240, 3)
        assert before.binding == "requests_per_minute" and before.expected_seconds == pytest.approx(2 / 10 + 0.2)
        api.embed(config, build=False)
        assert api.plan(config).texts_to_send == 0  # the live snapshot holds everything
        elsewhere = api.plan(replace(config, out_dir=tmp_path / "other"))  # same cache, fresh output
        assert (elsewhere.documents_to_chunk, elsewhere.cache_hits, elsewhere.requests) == (240, 240, 0)
        env = {"GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
               "GIGACHAT_CREDENTIALS": emu.credentials, "PIPELINE_CACHE_DIR": str(tmp_path / "cold")}
        requests = emu.stats()["requests"]
        result = CliRunner().invoke(cli, ["reindex", str(corpus), "--out", str(tmp_path / "x"), "--model", MODEL,
                                          "--plan", "--batch-size", "50"], env=env)
        assert emu.stats()["requests"] == requests
    assert result.exit_code == 0, result.output
    assert "240 chunks, 0 cache hits" in result.output and "5 requests of up to 50 texts" in result.output
    assert "assumed" in result.output  # says what it guessed about latency
    assert not (tmp_path / "x").exists()


def test_fresh_build_written_while_embedding_equals_the_corpus_in_order(corpus: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SnapshotStream, "ROW_GROUP_BYTES", 16 * 4 * 1024)  # 16 rows
    with start_emulator(_profile(base_latency_ms=5)) as emu:
        config = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", batch_size=8, concurrency=4)
        report = _embed(config)
        tokens_issued = emu.stats()["tokens_issued"]
    assert tokens_issued == 1  # the warm-up's token, which the requests waited for instead of asking again
    assert report.failed_chunks == 0 and report.vectors == 240
    path = current_snapshot(config.out_dir).vectors_path
    assert pq.ParquetFile(path).metadata.num_row_groups > 2  # written as the batches landed
    ids = pq.read_table(path, columns=["chunk_id"]).column(0).to_pylist()
    assert ids == [c.chunk_id for c in api.chunk_corpus(config, corpus)]  # corpus order, as a merge would give
    assert not list(path.parent.glob(".*.tmp"))
    _assert_each_chunk_once(config)


def test_failed_batches_drop_the_streamed_file_and_their_documents(corpus: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SnapshotStream, "ROW_GROUP_BYTES", 16 * 4 * 1024)  # 16 rows
    with start_emulator(_profile(error_rate=0.3)) as emu:
        config = _config(emu, corpus, tmp_path / "out", tmp_path / "cache", batch_size=8, concurrency=2,
                         max_attempts=1)
        report = _embed(config)
        assert 0 < report.failed_chunks < 240 and report.exit_code == 3
        path = current_snapshot(config.out_dir).vectors_path
        ids = pq.read_table(path, columns=["doc_id"]).column(0).to_pylist()
        assert len(ids) == 240 - report.failed_chunks and not set(ids) & set(report.failed_documents)
        assert not list(path.parent.glob(".*.tmp"))
        rerun = _embed(replace(config, embedding=replace(config.embedding, max_attempts=10)))
    assert rerun.failed_chunks == 0 and rerun.embedded == report.failed_chunks
    _assert_each_chunk_once(config)
