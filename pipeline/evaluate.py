"""Evaluate: retrieval quality on a BEIR-layout dataset, run through the normal pipeline.

Chunk hits map back to documents (first hit of a document counts); reports recall@1/@10, MRR@10, nDCG@10.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .errors import ConfigError

__all__ = ["EvalReport", "load_beir", "retrieval_metrics", "write_beir_corpus"]

CORPUS_FILE = "corpus.jsonl"


@dataclass
class EvalReport:
    dataset: str
    model: str
    queries: int
    documents: int
    chunks: int
    metrics: dict[str, float]
    index: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def load_beir(path: Path) -> tuple[dict[str, str], dict[str, dict[str, str]], dict[str, dict[str, int]]]:
    """queries, corpus and qrels of a single-file BEIR dataset. Raises ConfigError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        queries, corpus, qrels = data["queries"], data["corpus"], data["qrels"]
    except FileNotFoundError:
        raise ConfigError(f"{path}: dataset not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a BEIR dataset with queries, corpus and qrels ({e})") from None
    return queries, corpus, qrels


def write_beir_corpus(corpus: Mapping[str, Mapping[str, str]], path: Path) -> None:
    """The corpus as one .jsonl file the sources stage reads: title (if any) above the text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for doc_id, doc in corpus.items():
            title = (doc.get("title") or "").strip()
            text = f"{title}\n\n{doc.get('text', '')}" if title else doc.get("text", "")
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")


def retrieval_metrics(ranked: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]],
                      k: int = 10) -> dict[str, float]:
    """Mean recall@1, recall@k, MRR@k and nDCG@k over the queries that have judgements."""
    r1 = rk = mrr = ndcg = 0.0
    judged = [q for q in qrels if qrels[q]]
    for qid in judged:
        relevant = {d for d, rel in qrels[qid].items() if rel > 0}
        docs = list(ranked.get(qid, []))[:k]
        r1 += len(relevant & set(docs[:1])) / len(relevant)
        rk += len(relevant & set(docs)) / len(relevant)
        mrr += next((1 / (i + 1) for i, d in enumerate(docs) if d in relevant), 0.0)
        dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(docs) if d in relevant)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
        ndcg += dcg / ideal
    n = max(1, len(judged))
    return {"recall@1": round(r1 / n, 4), f"recall@{k}": round(rk / n, 4), f"mrr@{k}": round(mrr / n, 4),
            f"ndcg@{k}": round(ndcg / n, 4)}


def evaluate(config: Config, dataset: Path, work_dir: Path, *, k: int = 10, progress: Any = None) -> EvalReport:
    """Embed the dataset's corpus with `config`'s model into work_dir, then score its queries."""
    from . import api
    from .search import search_vectors

    started = time.perf_counter()
    queries, corpus, qrels = load_beir(dataset)
    corpus_path = work_dir / "corpus" / CORPUS_FILE
    if not corpus_path.is_file():
        write_beir_corpus(corpus, corpus_path)
    run_config = replace(config, corpus=corpus_path.parent, out_dir=work_dir / "out")
    embed_report = api.embed(run_config, **({"progress": progress} if progress else {}))
    searcher = api._Searcher(run_config, None)
    qids = list(queries)
    vectors = searcher.embed([queries[q] for q in qids], is_query=True)
    ranked: dict[str, list[str]] = {}
    prefix = f"{CORPUS_FILE}#"
    for qid, vector in zip(qids, vectors, strict=True):
        docs: list[str] = []
        for hit in search_vectors(searcher.index, searcher.rows, np.asarray(vector), k * 5):
            doc = hit.doc_id.removeprefix(prefix)
            if doc not in docs:
                docs.append(doc)
        ranked[qid] = docs[:k]
    return EvalReport(dataset=str(dataset), model=run_config.model, queries=len(qids), documents=len(corpus),
                      chunks=embed_report.chunks, metrics=retrieval_metrics(ranked, qrels, k),
                      index=embed_report.index or {}, seconds=round(time.perf_counter() - started, 1))
