"""What a scheduled job meets in the wild, against the emulator over real HTTP: 500s on one-off calls
(search, ask), a Retry-After of inf, a corpus that vanished or shrank, a deployment that embeds nothing."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline import api
from pipeline.config import Config, load_config
from pipeline.emulator import EmulatorProfile, start_emulator
from pipeline.errors import ShrinkRefusedError, StoreError
from pipeline.run import EXIT_NOTHING_EMBEDDED
from pipeline.store import current_snapshot

TOPICS = ["rivers and the cities built on them", "sourdough bread and its starter", "black holes and light",
          "composting kitchen waste at home", "the Trans-Siberian railway", "espresso and milk foam"]


def _corpus(root: Path, n: int = 6) -> Path:
    corpus = root / "corpus"
    corpus.mkdir(exist_ok=True)
    for i in range(n):
        (corpus / f"doc{i}.txt").write_text(f"Document {i} is about {TOPICS[i % len(TOPICS)]}.\n", encoding="utf-8")
    return corpus


def _config(emu: Any, root: Path, corpus: Path | None = None, model: str = "Embeddings") -> Config:
    env = {"GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
           "GIGACHAT_CREDENTIALS": emu.credentials, "PIPELINE_CACHE_DIR": str(root / "cache"),
           "GIGACHAT_TIMEOUT": "10"}
    return load_config(None, env=env, corpus=corpus, out_dir=root / "out", model=model)


def test_searches_survive_a_server_answering_500s(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    with start_emulator(EmulatorProfile()) as emu:
        assert api.embed(_config(emu, tmp_path, corpus)).exit_code == 0
    with start_emulator(EmulatorProfile(error_rate=0.3, seed=3)) as flaky:
        config = _config(flaky, tmp_path)
        for topic in TOPICS * 2:
            assert api.search(config, topic, k=2).hits
        assert flaky.stats()["status_counts"].get("500", 0) >= 2  # the retries were needed


def test_ask_with_a_chat_model_survives_500s(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    with start_emulator(EmulatorProfile()) as emu:
        api.embed(_config(emu, tmp_path, corpus))
    # The answer loop retries a stream that fails before its first text once: 15 % of calls failing.
    with start_emulator(EmulatorProfile(error_rate=0.15, seed=2)) as flaky:
        config = _config(flaky, tmp_path)
        for topic in TOPICS[:4]:
            answer = api.ask(config, f"What is said about {topic}?", k=2, chat_model="GigaChat-2-Lite")
            assert answer.text
        assert flaky.stats()["status_counts"].get("500", 0) >= 1


def test_a_retry_after_of_inf_ends_the_run_at_once_with_the_reason(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, n=40)
    # One call a minute, then 429 + Retry-After: inf for every other call.
    with start_emulator(EmulatorProfile(rps=1 / 60, retry_after="inf")) as emu:
        config = _config(emu, tmp_path, corpus)
        config = replace(config, embedding=replace(config.embedding, batch_size=4, concurrency=1))
        started = time.monotonic()
        report = api.embed(config)
    assert time.monotonic() - started < 30
    assert report.failed_chunks and report.exit_code in (3, EXIT_NOTHING_EMBEDDED)
    assert any("over the 300 s cap" in reason for reason in report.failure_reasons)


def test_a_deployment_that_embeds_nothing_is_an_error_not_partial(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    with start_emulator(EmulatorProfile()) as emu:
        config = _config(emu, tmp_path, corpus)
        wrong = replace(config, gigachat=replace(config.gigachat, credentials=None, access_token=None,
                                                 user="nobody", password=config.gigachat.credentials))
        report = api.embed(wrong)
    assert report.embedded == 0 and report.failed_chunks > 0
    assert report.exit_code == EXIT_NOTHING_EMBEDDED != 3


def test_an_emptied_or_shrunk_corpus_does_not_replace_the_live_index(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, n=6)
    with start_emulator(EmulatorProfile()) as emu:
        config = _config(emu, tmp_path, corpus)
        api.embed(config)
        live = current_snapshot(config.out_dir)
        for doc in corpus.iterdir():  # an unmounted share: the folder is there, its files are not
            doc.unlink()
        with pytest.raises(ShrinkRefusedError, match="no documents.*--allow-shrink"):
            api.embed(config)
        _corpus(tmp_path, n=2)  # 4 of 6 gone: over the 50 % default
        with pytest.raises(ShrinkRefusedError, match="4 of the 6 live documents are gone"):
            api.embed(config)
        assert current_snapshot(config.out_dir).path == live.path  # still serving
        assert api.search(config, "rivers", k=1).hits
        shrunk = api.embed(config, allow_shrink=True)
        assert shrunk.exit_code == 0 and shrunk.documents == 2
        for doc in corpus.iterdir():
            doc.unlink()
        api.embed(config, allow_shrink=True)  # asked for: an empty snapshot is published
        with pytest.raises(StoreError, match="empty"):
            api.search(config, "rivers", k=1)


def test_a_first_run_over_an_empty_corpus_is_refused(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with start_emulator(EmulatorProfile()) as emu, pytest.raises(ShrinkRefusedError, match="nothing to index"):
        api.embed(_config(emu, tmp_path, corpus))


def test_a_corrupt_faiss_file_is_an_error_naming_it(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    with start_emulator(EmulatorProfile()) as emu:
        config = _config(emu, tmp_path, corpus)
        api.embed(config)
        index_file = current_snapshot(config.out_dir).index_dir / "index.faiss"
        index_file.write_bytes(index_file.read_bytes()[:100])  # truncated, as by a full disk
        with pytest.raises(StoreError, match=r"index\.faiss: unreadable FAISS index"):
            api.search(config, "rivers", k=1)


def test_a_file_system_that_cannot_lock_is_an_error_not_lock_held(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl

    from pipeline.errors import LockHeldError

    def no_locks(fd: int, operation: int) -> None:  # what NFS without lockd answers
        raise OSError(errno.ENOLCK, "No locks available")

    corpus = _corpus(tmp_path)
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with start_emulator(EmulatorProfile()) as emu, pytest.raises(StoreError, match="cannot take the run lock") as info:
        api.embed(_config(emu, tmp_path, corpus))
    assert not isinstance(info.value, LockHeldError) and info.value.exit_code != 75
    assert "ENOLCK" in str(info.value)


def test_a_crashed_runs_leftovers_are_removed_and_the_rollback_kept(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    with start_emulator(EmulatorProfile()) as emu:
        config = _config(emu, tmp_path, corpus)
        api.embed(config)
        (corpus / "doc0.txt").write_text("Document 0 now talks about tea.\n", encoding="utf-8")
        api.embed(config)
        snapshots = config.out_dir / "snapshots"
        rollback = sorted(p.name for p in snapshots.iterdir())[0]
        stray_snap = snapshots / "99991231T235959.000000000"  # newer than CURRENT: a crashed run's
        (stray_snap / "index").mkdir(parents=True)
        stray_tmp = config.out_dir / ".run-report.json.0badf00d.tmp"
        stray_tmp.write_text("{", encoding="utf-8")
        (corpus / "doc1.txt").write_text("Document 1 now talks about coffee.\n", encoding="utf-8")
        api.embed(config)
    assert not stray_snap.exists() and not stray_tmp.exists()
    assert len(list(snapshots.iterdir())) == 2 and rollback not in {p.name for p in snapshots.iterdir()}


def test_every_index_file_is_on_disk_before_current_moves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    published_after: list[list[str]] = []

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace_(src: str, dst: str) -> None:
        if str(dst).endswith("CURRENT"):
            published_after.append(list(synced))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace_)
    corpus = _corpus(tmp_path)
    with start_emulator(EmulatorProfile()) as emu:
        config = _config(emu, tmp_path, corpus)
        api.embed(config)
    index_dir = current_snapshot(config.out_dir).index_dir
    assert published_after
    for name in ("index.faiss", "meta.json"):
        assert str(index_dir / name) in published_after[-1], name


def test_an_unreadable_previous_snapshot_is_an_error_naming_the_file(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    with start_emulator(EmulatorProfile()) as emu:
        config = _config(emu, tmp_path, corpus)
        api.embed(config)
        vectors = current_snapshot(config.out_dir).vectors_path
        vectors.write_bytes(b"PAR1 not really parquet")
        (corpus / "doc0.txt").write_text("Document 0 now talks about tea.\n", encoding="utf-8")
        with pytest.raises(StoreError, match=r"vectors\.parquet"):
            api.embed(config)


def test_searches_wait_out_a_429_storm(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    with start_emulator(EmulatorProfile()) as emu:
        api.embed(_config(emu, tmp_path, corpus))
    with start_emulator(EmulatorProfile(rps=4)) as limited:  # 429 + Retry-After past 4 calls a second
        config = _config(limited, tmp_path)
        # Eight at a time: a storm whatever the machine's load (one by one, a busy machine stays under 4/s).
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda topic: api.search(config, topic, k=1), TOPICS * 2))
        assert all(r.hits for r in results)
        assert limited.stats()["status_counts"].get("429", 0) >= 1
