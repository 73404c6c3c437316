"""Re-indexing that costs what changed: unchanged files are not read (size and mtime), a failed document's
file is read again, --verify reads everything; the snapshot is written as a stream."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import api
from pipeline.store import current_snapshot


def _manifest(out: Path) -> dict:
    return json.loads(current_snapshot(out).manifest_path.read_text(encoding="utf-8"))


def test_unchanged_files_are_not_read_again(tiny_corpus: Path, config_for) -> None:
    config = config_for(tiny_corpus)
    first = api.embed(config, build=False)
    assert first.unread == 0
    second = api.embed(config, build=False)
    assert second.unread == first.files - sum(first.skipped.values()) > 0
    assert second.diff["unchanged"] == first.documents and second.embedded == 0
    entry = next(iter(_manifest(config.out_dir)["documents"].values()))
    assert {"size", "mtime_ns"} <= set(entry)


def test_a_change_that_keeps_size_and_mtime_needs_verify(tiny_corpus: Path, config_for) -> None:
    config = config_for(tiny_corpus)
    api.embed(config, build=False)
    path = tiny_corpus / "en" / "space.txt"
    before = path.stat()
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("a", "o", 1), encoding="utf-8")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime, as some copy tools do
    assert api.embed(config, build=False).diff["changed"] == 0  # trusted the file system
    verified = api.embed(config, build=False, verify=True)
    assert verified.diff["changed"] == 1 and verified.unread == 0
    rows = pq.read_table(current_snapshot(config.out_dir).vectors_path, columns=["source_path", "text"])
    texts = [t for p, t in zip(rows.column(0).to_pylist(), rows.column(1).to_pylist(), strict=True)
             if p == "en/space.txt"]
    assert texts and text.replace("a", "o", 1).startswith(texts[0][:20])


def test_a_touched_file_is_read_and_found_unchanged(tiny_corpus: Path, config_for) -> None:
    config = config_for(tiny_corpus)
    api.embed(config, build=False)
    (tiny_corpus / "en" / "space.txt").touch()
    again = api.embed(config, build=False)
    assert again.diff["changed"] == 0 and again.unread == again.files - sum(again.skipped.values()) - 1


def test_max_queued_texts_bounds_the_reader_and_loses_nothing(tiny_corpus: Path, config_for,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    config = config_for(tiny_corpus)
    config = replace(config, embedding=replace(config.embedding, max_queued_texts=1, batch_size=1))
    report = api.embed(config, build=False)
    assert report.failed_chunks == 0 and report.vectors == report.chunks > 1
    ids = pq.read_table(current_snapshot(config.out_dir).vectors_path, columns=["chunk_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids)) == report.chunks


def test_a_file_with_a_failed_document_is_read_again(tmp_path: Path, config_for) -> None:
    from dataclasses import replace

    from pipeline.errors import ServerError
    from tests.fakes import FakeProvider

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("A plain document about rivers.\n", encoding="utf-8")
    records = [{"id": "ok", "text": "Bread needs flour, water and time."},
               {"id": "bad", "text": "BROKEN record about tea, new in this run."}]
    (corpus / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    config = config_for(corpus)
    config = replace(config, embedding=replace(config.embedding, batch_size=1))
    broken = FakeProvider(config.model_spec(), fail_text="BROKEN", error=ServerError)
    first = api.embed(config, build=False, provider=broken)
    assert first.failed_documents == ["notes.jsonl#bad"] and first.exit_code == 3
    entries = _manifest(config.out_dir)["documents"]
    assert "mtime_ns" not in entries["notes.jsonl#ok"]  # its file must be read again next time
    assert "mtime_ns" in entries["a.txt"]
    second = api.embed(config, build=False)
    assert second.unread == 1 and second.failed_chunks == 0
    assert "notes.jsonl#bad" in _manifest(config.out_dir)["documents"]


def test_a_reindex_updates_the_live_index_in_place_and_says_so(tiny_corpus: Path, config_for) -> None:
    config = config_for(tiny_corpus)
    first = api.embed(config)
    assert first.index["mode"] == "rebuilt" and "no previous" in first.index["mode_reason"]
    (tiny_corpus / "en" / "new.md").write_text("# Tomatoes\n\nTomatoes need sun, water and support.\n",
                                               encoding="utf-8")
    second = api.embed(config)
    assert second.index["mode"] == "updated", second.index.get("mode_reason")
    assert second.index["added"] >= 1 and second.index["vectors"] == second.vectors
    hits = api.search(config, "what do tomatoes need", k=1).hits
    assert hits[0].source_path == "en/new.md"


def test_bm25_past_its_row_cap_is_skipped_and_hybrid_says_why(tiny_corpus: Path, config_for) -> None:
    from dataclasses import replace

    from pipeline.errors import StoreError

    config = config_for(tiny_corpus)
    config = replace(config, index=replace(config.index, bm25_max_rows=1))
    report = api.embed(config)
    assert report.index["bm25"] is False and report.vectors > 1
    assert api.search(config, "neutron star", k=1).hits  # dense search is unaffected
    with pytest.raises(StoreError, match="bm25_max_rows"):
        api.search(config, "neutron star", k=1, hybrid=True)
