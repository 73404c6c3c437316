"""Filters and hybrid search end to end: the local model over the tiny corpus, through api and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import api
from pipeline.errors import ConfigError
from pipeline.filters import SearchFilter


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=240)


def test_filters_and_hybrid_through_api_and_cli(tiny_corpus: Path, config_for) -> None:
    config = config_for(tiny_corpus)
    report = api.embed(config)
    assert report.index and report.index["bm25"]

    only_en = api.search(config, "хлеб", k=5, filters=SearchFilter(path="en/*"))
    assert len(only_en.hits) == 2 and all(h.source_path.startswith("en/") for h in only_en.hits)
    html = api.search(config, "метро", k=5, filters=SearchFilter(doc_type="html"))
    assert [h.source_path for h in html.hits] == ["ru/metro.html"]
    coffee = api.search(config, "bread", k=5, filters=SearchFilter(fields=(("topic", "coff*"), ("lang", "en"))))
    assert [h.doc_id for h in coffee.hits] == ["faq.jsonl#coffee-1"]  # the only record with that metadata

    hybrid = api.search(config, "Espresso", k=3, hybrid=True)
    assert hybrid.hits[0].doc_id == "faq.jsonl#coffee-1"
    assert hybrid.hits[0].score <= 2 / 61  # a fused score: at best first in both lists
    answer = api.ask(config, "Когда открылось московское метро?", filters=SearchFilter(path="ru/*"), hybrid=True)
    assert answer.sources and all(s.source_path.startswith("ru/") for s in answer.sources)

    out = str(config.out_dir)
    result = _cli("search", "хлеб", "--path", "ru/*", "--type", "md", "--hybrid", "--json", "--out", out)
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)["hits"]
    assert hits and {h["source_path"] for h in hits} == {"ru/hleb.md"}
    bad = _cli("search", "x", "--filter", "oops", "--out", out)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    with pytest.raises(ConfigError):
        SearchFilter.parse(fields=["=x"])
