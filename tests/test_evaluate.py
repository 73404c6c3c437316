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
    assert report.exact == report.metrics and report.ann_recall_at_10 == 1.0  # 3 chunks: Flat is chosen
    assert report.bm25["recall@10"] == 1.0 and report.hybrid["mrr@10"] == 1.0
    table = report.table().splitlines()
    assert table[0].split() == ["mode", "recall@1", "recall@10", "mrr@10", "ndcg@10"]
    assert [line.split()[0] for line in table[1:]] == ["exact", "index", "BM25", "hybrid"]
    lines = (tmp_path / "work" / "corpus" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["text"].startswith("Bread\n\n")
    write_beir_corpus({}, tmp_path / "empty.jsonl")
    assert (tmp_path / "empty.jsonl").read_text() == ""


def test_rank_documents_maps_chunks_to_first_appearance() -> None:
    from pipeline.evaluate import rank_documents

    doc_of_row = ["a", "a", "b", "c", "b"]
    assert rank_documents([1, 0, 4, 3, 2], doc_of_row, 10) == ["a", "b", "c"]
    assert rank_documents([3, 2, 0], doc_of_row, 2) == ["c", "b"]


def test_beir_folder_layout(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "bread"}\n', encoding="utf-8")
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "text": "Bread."}\n', encoding="utf-8")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    queries, corpus, qrels = load_beir(tmp_path)
    assert queries == {"q1": "bread"} and corpus["d1"]["title"] == "T" and qrels == {"q1": {"d1": 1}}
    (tmp_path / "qrels" / "test.tsv").unlink()
    with pytest.raises(ConfigError, match="qrels"):
        load_beir(tmp_path)


def test_eval_cli_reports_exact_index_bm25_and_hybrid(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    data = {
        "queries": {"q1": "How do I bake sourdough bread?", "q2": "What is a black hole?",
                    "q3": "Как открылось московское метро?"},
        "corpus": {"d1": {"title": "Bread", "text": "Sourdough bread needs a starter, flour, water and a hot oven."},
                   "d2": {"title": "", "text": "A black hole is a region where gravity stops even light escaping."},
                   "d3": {"title": "Метро", "text": "Московский метрополитен открылся в 1935 году."},
                   "d4": {"title": "Chess", "text": "The Sicilian defence is a chess opening."}},
        "qrels": {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}},
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "pipeline", "eval", str(path), "--json", "--index-type", "hnsw",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["queries"] == 3 and report["documents"] == 4
    assert report["index"]["kind"] == "hnsw" and report["index"]["factory"].startswith("HNSW")
    for mode in ("metrics", "exact", "bm25", "hybrid"):
        assert set(report[mode]) == {"recall@1", "recall@10", "mrr@10", "ndcg@10"}, mode
    assert report["exact"]["mrr@10"] == 1.0 and report["hybrid"]["recall@10"] == 1.0
    assert report["ann_recall_at_10"] == 1.0  # 4 chunks: the graph finds them all
    assert (tmp_path / "out" / "eval" / "tiny" / "e5-small-local" / "out" / "CURRENT").is_file()
