import json
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.evaluate import evaluate, load_beir, retrieval_metrics, write_beir_corpus


def test_metrics_by_hand() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    ranked = {"q1": ["a", "x"], "q2": ["x", "b"], "q3": ["x", "y"]}
    m = retrieval_metrics(ranked, qrels, k=10)
    assert m["recall@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["recall@10"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["mrr@10"] == pytest.approx((1 + 0.5) / 3, abs=1e-4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / 1.58496) / 3, abs=1e-3)


def test_bad_dataset_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"queries": {}}', encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.json"):
        load_beir(bad)


def test_evaluate_runs_the_pipeline_on_a_tiny_dataset(tmp_path: Path, config_for) -> None:
    data = {
        "queries": {"q1": "How do I bake sourdough bread?", "q2": "What is a black hole?"},
        "corpus": {"d1": {"title": "Bread", "text": "Sourdough bread needs a starter, flour, water and a hot oven."},
                   "d2": {"title": "", "text": "A black hole is a region where gravity stops even light escaping."},
                   "d3": {"title": "Chess", "text": "The Sicilian defence is a chess opening."}},
        "qrels": {"q1": {"d1": 1}, "q2": {"d2": 1}},
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    report = evaluate(config_for(), path, tmp_path / "work")
    assert report.documents == 3 and report.queries == 2
    assert report.metrics["recall@1"] == 1.0 and report.metrics["mrr@10"] == 1.0
    lines = (tmp_path / "work" / "corpus" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["text"].startswith("Bread\n\n")
    write_beir_corpus({}, tmp_path / "empty.jsonl")
    assert (tmp_path / "empty.jsonl").read_text() == ""
