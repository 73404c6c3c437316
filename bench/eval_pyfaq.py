"""Retrieval quality of a model on ../shared/data/eval/pyfaq.json through the whole pipeline.

Usage: python bench/eval_pyfaq.py [--model NAME] [--work DIR]; appends a line to bench/eval-results.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.config import load_config
from pipeline.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
DATASET = ROOT.parent / "shared" / "data" / "eval" / "pyfaq.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "eval-pyfaq")
    args = parser.parse_args()
    config = load_config(None, model=args.model)
    report = evaluate(config, args.dataset, args.work / config.model)
    print(json.dumps(report.__dict__, indent=2, ensure_ascii=False))
    m = report.metrics
    line = (f"| {time.strftime('%Y-%m-%d')} | {report.model} | {report.documents} docs / {report.chunks} chunks "
            f"| {m['mrr@10']:.3f} | {m['recall@1']:.3f} | {m['recall@10']:.3f} | {m['ndcg@10']:.3f} "
            f"| {report.index.get('factory', '')} | {report.seconds:.0f} s |\n")
    with (ROOT / "bench" / "eval-results.md").open("a", encoding="utf-8") as f:
        f.write(line)
    print(line)


if __name__ == "__main__":
    main()
