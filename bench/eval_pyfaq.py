"""Retrieval quality of a model on ../shared/data/eval/pyfaq.json through the whole pipeline.

Usage: python bench/eval_pyfaq.py [--model NAME] [--index-type KIND] [--contextual on|off] [--work DIR]
Appends one line per search mode (exact, the chosen index, BM25, hybrid) to bench/eval-results.md; a
--contextual setting is noted in the corpus column.
Re-runs are nearly free: vectors come from the cache (~/.cache/pipeline), only the index is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from pipeline.config import load_config
from pipeline.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT.parent / "shared" / "data" / "eval" / "pyfaq.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--index-type", default=None, help="auto (default), flat, hnsw, ivf, ivfsq, ivfpq")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--contextual", choices=("on", "off"), default=None,
                        help="[chunking] contextual: chunks embedded with their title and headings in front")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "eval-pyfaq")
    args = parser.parse_args()
    config = load_config(None, model=args.model)
    if args.index_type:
        config = config.with_overrides(index=replace(config.index, index_type=args.index_type))
    if args.contextual:
        config = config.with_overrides(chunking=replace(config.chunking, contextual=args.contextual == "on"))
    setting = f", contextual {args.contextual}" if args.contextual else ""
    report = evaluate(config, args.dataset, args.work / config.model)
    print(json.dumps(asdict(report), indent=2, ensure_ascii=False))
    print(report.table())
    factory = report.index.get("factory", "")
    modes = [("exact", report.exact, "Flat"), ("index", report.metrics, f"{factory}, ANN recall@10 "
             f"{report.ann_recall_at_10:.3f}"), ("BM25", report.bm25, "bm25s"),
             ("hybrid", report.hybrid, f"{factory} + BM25, RRF k=60")]
    corpus = f"{report.documents} docs / {report.chunks} chunks{setting}"
    lines = [f"| {time.strftime('%Y-%m-%d')} | {report.model} | {corpus} "
             f"| {mode} | {m['mrr@10']:.3f} | {m['recall@1']:.3f} | {m['recall@10']:.3f} | {m['ndcg@10']:.3f} "
             f"| {what} | {report.seconds:.0f} s |\n" for mode, m, what in modes if m]
    with (ROOT / "bench" / "eval-results.md").open("a", encoding="utf-8") as f:
        f.writelines(lines)
    print("".join(lines))


if __name__ == "__main__":
    main()
