"""Per-question reciprocal rank, contextual chunks off vs on, over two eval_pyfaq.py work dirs of one dataset.

Usage: python bench/eval_contextual_paired.py DATASET.json WORK_OFF WORK_ON  (the --work dirs of the two runs)
"""
import math
import sys
from dataclasses import replace
from pathlib import Path

from pipeline.config import load_config
from pipeline.evaluate import DOC_PREFIX, load_beir, rank_documents
from pipeline.search import Searcher

dataset, work = Path(sys.argv[1]), {"off": Path(sys.argv[2]), "on": Path(sys.argv[3])}
queries, corpus, qrels = load_beir(dataset)
qids = [q for q in queries if q in qrels]
rr = {}
for flag in ("off", "on"):
    base = load_config(None, model="e5-small-local")
    cfg = replace(base, chunking=replace(base.chunking, contextual=flag == "on")).with_out(
        work[flag] / "e5-small-local" / "out")
    s = Searcher(cfg)
    vecs = s.embed([queries[q] for q in qids], is_query=True)
    doc_of_row = [d.removeprefix(DOC_PREFIX) for d in s.rows.column("doc_id").to_pylist()]
    rows = s.exact(vecs, 50)
    out = []
    for q, r in zip(qids, rows, strict=True):
        docs = rank_documents(r, doc_of_row, 10)
        rel = {d for d, v in qrels[q].items() if v > 0}
        out.append(next((1 / (i + 1) for i, d in enumerate(docs) if d in rel), 0.0))
    rr[flag] = out
pairs = list(zip(rr["off"], rr["on"], strict=True))
wins = sum(b > a for a, b in pairs)
losses = sum(b < a for a, b in pairs)
print(f"queries {len(qids)} MRR off {sum(rr['off']) / len(qids):.4f} on {sum(rr['on']) / len(qids):.4f} "
      f"better {wins} worse {losses} same {len(qids) - wins - losses}")
n, k = wins + losses, min(wins, losses)  # two-sided sign test
p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
print(f"sign test p = {p:.3f}")
