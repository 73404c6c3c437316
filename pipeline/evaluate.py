"""Evaluate: retrieval quality on a BEIR-layout dataset: loading it, and the metrics of each search mode.

Embeds through run.py and ranks through search.Searcher, so it scores what users get; no search logic here.
Chunk hits map back to documents (a document ranks where its first chunk does); reports recall@1/@10,
MRR@10 and nDCG@10 for exact search, the chosen index, BM25 alone and hybrid, plus ANN recall@10 vs exact.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .errors import ConfigError
from .index.files import BM25_DIR
from .index.score import recall_at_k
from .run import Progress, embed, no_progress
from .search import Searcher

__all__ = ["EvalReport", "evaluate", "load_beir", "rank_documents", "retrieval_metrics", "write_beir_corpus"]

CORPUS_FILE = "corpus.jsonl"
DOC_PREFIX = f"{CORPUS_FILE}#"
CHUNKS_PER_DOC_DEPTH = 5  # chunk hits fetched per document wanted, before mapping to documents


@dataclass
class EvalReport:
    dataset: str
    model: str
    queries: int
    documents: int
    chunks: int
    metrics: dict[str, float]  # dense search with the chosen index
    exact: dict[str, float] = field(default_factory=dict)  # dense search, exact (Flat) over the same vectors
    bm25: dict[str, float] = field(default_factory=dict)  # lexical only
    hybrid: dict[str, float] = field(default_factory=dict)  # chosen index + BM25, reciprocal rank fusion
    ann_recall_at_10: float = 1.0  # chunks: the index's top 10 against exact top 10, on the dataset's queries
    index: dict[str, Any] = field(default_factory=dict)  # the IndexReport of the chosen index
    seconds: float = 0.0

    def table(self) -> str:
        """The metrics as a small text table, one row per search mode."""
        rows = [("exact (Flat)", self.exact), (f"index ({self.index.get('factory', '?')})", self.metrics),
                ("BM25", self.bm25), ("hybrid (index + BM25, RRF)", self.hybrid)]
        keys = list(self.metrics)
        lines = [f"{'mode':<34}" + "".join(f"{k:>11}" for k in keys)]
        lines += [f"{name:<34}" + "".join(f"{m.get(k, 0.0):>11.3f}" for k in keys) for name, m in rows if m]
        return "\n".join(lines)


def load_beir(path: Path) -> tuple[dict[str, str], dict[str, dict[str, str]], dict[str, dict[str, int]]]:
    """queries, corpus and qrels of a BEIR dataset: one JSON file, or a folder with queries.jsonl,
    corpus.jsonl and qrels/test.tsv (or qrels.tsv). Raises ConfigError naming the file."""
    if path.is_dir():
        return _load_beir_dir(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        queries, corpus, qrels = data["queries"], data["corpus"], data["qrels"]
    except FileNotFoundError:
        raise ConfigError(f"{path}: dataset not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: not a BEIR dataset with queries, corpus and qrels ({e})") from None
    return queries, corpus, qrels


def _load_beir_dir(path: Path) -> tuple[dict[str, str], dict[str, dict[str, str]], dict[str, dict[str, int]]]:
    qrels_file = next((p for p in (path / "qrels" / "test.tsv", path / "qrels.tsv") if p.is_file()), None)
    if not (path / "queries.jsonl").is_file() or not (path / "corpus.jsonl").is_file() or qrels_file is None:
        raise ConfigError(f"{path}: a BEIR folder needs queries.jsonl, corpus.jsonl and qrels/test.tsv")
    try:
        queries = {r["_id"]: r["text"] for r in _jsonl(path / "queries.jsonl")}
        corpus = {r["_id"]: {"title": r.get("title", ""), "text": r.get("text", "")} for r in _jsonl(path / "corpus.jsonl")}
        qrels: dict[str, dict[str, int]] = {}
        for line in qrels_file.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[2].strip().lstrip("-").isdigit():
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    except (json.JSONDecodeError, KeyError) as e:
        raise ConfigError(f"{path}: malformed BEIR file ({e})") from None
    return queries, corpus, qrels


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_beir_corpus(corpus: Mapping[str, Mapping[str, str]], path: Path) -> None:
    """The corpus as one .jsonl file the sources stage reads: title (if any) above the text, and as the
    record's title (what contextual chunks put in front of the chunks after the first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for doc_id, doc in corpus.items():
            title = (doc.get("title") or "").strip()
            text = f"{title}\n\n{doc.get('text', '')}" if title else doc.get("text", "")
            record = {"id": doc_id, "text": text, "title": title} if title else {"id": doc_id, "text": text}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def retrieval_metrics(ranked: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]],
                      k: int = 10) -> dict[str, float]:
    """Mean recall@1, recall@k, MRR@k and nDCG@k over the queries that have judgements."""
    r1 = rk = mrr = ndcg = 0.0
    judged = [q for q in qrels if any(rel > 0 for rel in qrels[q].values())]
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


def rank_documents(chunk_rows: Sequence[int], doc_of_row: Sequence[str], k: int) -> list[str]:
    """Distinct documents in the order their first chunk appears, at most k."""
    docs: list[str] = []
    for row in chunk_rows:
        doc = doc_of_row[row]
        if doc not in docs:
            docs.append(doc)
            if len(docs) == k:
                break
    return docs


def _padded(rows: Sequence[Sequence[int]], width: int) -> np.ndarray:
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, : min(width, len(row))] = row[:width]
    return out


def evaluate(config: Config, dataset: Path, work_dir: Path, *, k: int = 10,
             progress: Progress = no_progress) -> EvalReport:
    """Embed the dataset's corpus with `config`'s model and index settings into work_dir, then score its queries.

    Re-runs are cheap: vectors come from the cache, only the index is rebuilt.
    """
    started = time.perf_counter()
    queries, corpus, qrels = load_beir(dataset)
    if not queries or not corpus:
        raise ConfigError(f"{dataset}: no queries or no documents")
    corpus_path = work_dir / "corpus" / CORPUS_FILE
    if not corpus_path.is_file():
        write_beir_corpus(corpus, corpus_path)
    run_config = replace(config, corpus=corpus_path.parent).with_out(work_dir / "out")  # local, even for s3
    embed_report = embed(run_config, progress=progress)
    searcher = Searcher(run_config)
    qids = list(queries)
    vectors = searcher.embed([queries[q] for q in qids], is_query=True)
    doc_of_row = [d.removeprefix(DOC_PREFIX) for d in searcher.rows.column("doc_id").to_pylist()]
    depth = min(k * CHUNKS_PER_DOC_DEPTH, searcher.index.ntotal)

    exact_rows = searcher.exact(vectors, depth)
    index_rows = [searcher.dense(vector, depth) for vector in vectors]
    kk = min(k, depth)
    ann_recall = recall_at_k(_padded(index_rows, kk), _padded(exact_rows, kk))

    ranked_exact = {q: rank_documents(rows, doc_of_row, k) for q, rows in zip(qids, exact_rows, strict=True)}
    ranked_index = {q: rank_documents(rows, doc_of_row, k) for q, rows in zip(qids, index_rows, strict=True)}
    report = EvalReport(dataset=str(dataset), model=searcher.spec.name, queries=len(qids), documents=len(corpus),
                        chunks=embed_report.chunks, metrics=retrieval_metrics(ranked_index, qrels, k),
                        exact=retrieval_metrics(ranked_exact, qrels, k), ann_recall_at_10=round(ann_recall, 4),
                        index=embed_report.index or {})
    if (searcher.snap.index_dir / BM25_DIR).is_dir():
        ranked_bm25 = {q: rank_documents(searcher.lexical(queries[q], depth), doc_of_row, k) for q in qids}
        ranked_hybrid = {q: rank_documents(searcher.fused(queries[q], vector, depth), doc_of_row, k)
                         for q, vector in zip(qids, vectors, strict=True)}
        report.bm25 = retrieval_metrics(ranked_bm25, qrels, k)
        report.hybrid = retrieval_metrics(ranked_hybrid, qrels, k)
    report.seconds = round(time.perf_counter() - started, 1)
    return report
