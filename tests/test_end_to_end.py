"""The whole flow on the offline default model: a temporary corpus with bad files, real Parquet, real FAISS."""

import json
from pathlib import Path

import faiss
import pyarrow.parquet as pq
import pytest

from pipeline import api
from pipeline.errors import ModelMismatchError, StoreError
from pipeline.store import current_snapshot


def test_embed_search_ask_and_rerun(tiny_corpus: Path, config_for) -> None:
    config = config_for(tiny_corpus)
    report = api.embed(config)
    assert report.documents == 5 and report.files == 8
    assert report.skipped == {"binary": 1, "invalid UTF-8": 1, "empty": 1}
    assert report.vectors == report.chunks == report.embedded >= 5
    assert report.failed_chunks == 0 and report.exit_code == 0

    snap = current_snapshot(config.out_dir)
    table = pq.read_table(snap.vectors_path)
    assert table.num_rows == report.chunks
    assert table.schema.field("vector").type.list_size == 384
    assert faiss.read_index(str(snap.index_dir / "index.faiss")).ntotal == report.chunks
    meta = json.loads(table.schema.metadata[b"pipeline"])
    assert meta["model"] == "e5-small-local" and meta["fingerprint"]["chunking"]["max_tokens"] == 512
    # offsets point back into the source document
    row = table.slice(0, 1).to_pylist()[0]
    assert row["char_end"] > row["char_start"] >= 0

    en = api.search(config, "how do I create a virtual environment", k=3)
    assert en.hits[0].source_path == "en/python.md"
    ru = api.search(config, "как испечь хлеб", k=3)
    assert ru.hits[0].source_path == "ru/hleb.md"
    assert api.search(config, "метро в Москве", k=1).hits[0].source_path == "ru/metro.html"
    assert api.search(config, "espresso brewing", k=1).hits[0].doc_id == "faq.jsonl#coffee-1"

    answer = api.ask(config, "What is a black hole?", k=3)
    assert answer.grounded and 1 in answer.cited
    assert "light" in answer.text

    again = api.embed(config)  # unchanged corpus: rows carried over, nothing chunked or embedded
    assert again.embedded == 0 and again.chunks == report.chunks
    assert again.diff == {"added": 0, "changed": 0, "deleted": 0, "unchanged": 5}
    assert (config.out_dir / "run-report.json").is_file()

    rebuilt = api.build_index_for(config)
    assert rebuilt.vectors == report.chunks
    assert api.search(config, "black hole gravity", k=1).hits[0].source_path == "en/space.txt"


def test_search_refuses_another_model_and_missing_index(tiny_corpus: Path, config_for) -> None:
    config = config_for(tiny_corpus)
    with pytest.raises(StoreError, match="pipeline embed"):
        api.search(config, "anything")
    api.embed(config, build=False)
    with pytest.raises(StoreError, match="pipeline index"):
        api.search(config, "anything")
    api.build_index_for(config)
    with pytest.raises(ModelMismatchError, match="Embeddings"):
        api.search(config, "anything", model="Embeddings")
