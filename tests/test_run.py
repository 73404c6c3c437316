"""Scheduled re-indexing: incremental runs equal a from-scratch build; locks, crashes and model changes."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import api
from pipeline.errors import LockHeldError, ModelMismatchError, SourceError
from pipeline.store import current_snapshot
from tests.fakes import FakeProvider


def _rows(out_dir: Path) -> dict[str, tuple]:
    table = pq.read_table(current_snapshot(out_dir).vectors_path)
    ids = table.column("chunk_id").to_pylist()
    texts = table.column("text").to_pylist()
    vectors = table.column("vector").to_pylist()
    return {i: (t, np.asarray(v)) for i, t, v in zip(ids, texts, vectors, strict=True)}


def _assert_same_index(a: Path, b: Path) -> None:
    ra, rb = _rows(a), _rows(b)
    assert sorted(ra) == sorted(rb)
    for chunk_id in ra:
        assert ra[chunk_id][0] == rb[chunk_id][0]
        np.testing.assert_allclose(ra[chunk_id][1], rb[chunk_id][1], atol=1e-5)


def _edit_corpus(root: Path) -> None:
    (root / "en" / "space.txt").write_text("Neutron stars are the collapsed cores of massive stars. They spin fast.\n",
                                           encoding="utf-8")  # changed
    (root / "ru" / "hleb.md").rename(root / "ru" / "khleb.md")  # renamed: delete + add, vectors from the cache
    (root / "faq.jsonl").unlink()  # deleted
    (root / "en" / "new.md").write_text("# Tomatoes\n\nTomatoes need sun, water and support.\n", encoding="utf-8")


def test_incremental_run_equals_a_build_from_scratch(tiny_corpus: Path, config_for, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_for(tiny_corpus)
    first = api.embed(config)
    _edit_corpus(tiny_corpus)
    second = api.embed(config)
    assert second.diff == {"added": 2, "changed": 1, "deleted": 2, "unchanged": 2}  # a rename is a delete + an add
    assert second.embedded == 2  # the changed file and the new one; the renamed file's chunk is cached
    assert second.chunks == first.chunks

    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "fresh-cache"))
    scratch = replace(config_for(tiny_corpus), out_dir=tmp_path / "scratch")
    assert api.embed(scratch).embedded == scratch_chunks(scratch)
    _assert_same_index(config.out_dir, scratch.out_dir)
    hits = api.search(config, "neutron star", k=1).hits
    assert hits[0].source_path == "en/space.txt" and "Neutron" in hits[0].text


def scratch_chunks(config) -> int:
    return len(list(api.chunk_corpus(config, config.corpus)))


def test_other_model_is_refused_or_built_beside(tiny_corpus: Path, config_for) -> None:
    config = config_for(tiny_corpus)
    api.embed(config, build=False)
    from pipeline.config import ChunkingConfig

    other = replace(config, chunking=ChunkingConfig(target_tokens=24))
    with pytest.raises(ModelMismatchError, match="--new-index"):
        api.embed(other)
    report = api.embed(other, new_index=True, build=False)
    assert Path(report.out_dir) != config.out_dir and Path(report.out_dir).name.startswith("out.e5-small-local-")
    assert _rows(config.out_dir) and len(_rows(Path(report.out_dir))) > len(_rows(config.out_dir))


def test_second_run_while_locked_exits_at_once(tiny_corpus: Path, config_for) -> None:
    from filelock import FileLock

    config = config_for(tiny_corpus)
    config.out_dir.mkdir(parents=True)
    with FileLock(config.out_dir / ".lock"), pytest.raises(LockHeldError):
        api.embed(config)


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=240)


@pytest.mark.parametrize("point", ["after_embed", "before_publish", "after_publish"])
def test_kill_9_at_any_point_keeps_the_old_index_and_the_rerun_completes(tiny_corpus: Path, tmp_path: Path,
                                                                         config_for, point: str) -> None:
    config = config_for(tiny_corpus)
    api.embed(config)
    before = _rows(config.out_dir)
    _edit_corpus(tiny_corpus)
    crashed = _run_cli("reindex", str(tiny_corpus), "--out", str(config.out_dir), "--no-progress",
                       env={"PIPELINE_TEST_CRASH_AT": point})
    assert crashed.returncode == -9
    live = _rows(config.out_dir)  # whatever happened, a complete index serves: the old one, or the new one
    assert sorted(live) == sorted(before) or point == "after_publish"
    assert api.search(config, "black hole", k=1).hits
    rerun = api.embed(config)  # the lock died with the process; the cache holds what was embedded
    assert rerun.exit_code == 0 and rerun.embedded == 0
    scratch = replace(config, out_dir=tmp_path / "scratch")
    api.embed(scratch)
    _assert_same_index(config.out_dir, scratch.out_dir)
    assert len(list((config.out_dir / "snapshots").iterdir())) <= 2  # crashed leftovers are cleaned up


class _ClosingProvider(FakeProvider):
    """A provider that counts its closes (the run owns a caller's provider and closes it exactly once)."""

    closed = 0

    async def aclose(self) -> None:
        self.closed += 1


def test_a_callers_provider_is_closed_once_whether_the_run_embeds_skips_or_is_refused(tiny_corpus: Path,
                                                                                       config_for) -> None:
    config = config_for(tiny_corpus)
    spec = config.model_spec()
    embedding = _ClosingProvider(spec)
    report = api.embed(config, build=False, provider=embedding)
    assert report.embedded > 0 and embedding.batches and embedding.closed == 1
    nothing_to_do = _ClosingProvider(spec)
    assert api.embed(config, build=False, provider=nothing_to_do).embedded == 0
    assert nothing_to_do.closed == 1 and not nothing_to_do.batches
    refused = _ClosingProvider(spec)
    with pytest.raises(SourceError):
        api.embed(replace(config, corpus=tiny_corpus / "missing"), provider=refused)
    assert refused.closed == 1


def test_embed_and_plan_share_the_run_context(tiny_corpus: Path, config_for) -> None:
    from pipeline.run_context import RunContext

    config = config_for(tiny_corpus)
    context = RunContext.open(config, config.model_spec())
    assert context.out_dir == config.out_dir
    report = api.embed(config, build=False)
    assert current_snapshot(config.out_dir).manifest()["fingerprint_id"] == context.fingerprint_id
    assert api.plan(config).texts_to_send == 0  # the same cache key: everything is cached
    context.read_previous()
    assert context.previous is not None and not context.foreign() and report.vectors
    other = replace(config, chunking=replace(config.chunking, overlap_tokens=config.chunking.overlap_tokens + 1))
    sibling = RunContext.open(other, other.model_spec(), new_index=True)
    assert sibling.out_dir.parent == config.out_dir.parent and sibling.out_dir.name.startswith("out.")
    assert sibling.cache_key == context.cache_key  # chunking does not change the vectors' cache
    assert RunContext.open(other, other.model_spec()).out_dir == config.out_dir  # without --new-index: as given
