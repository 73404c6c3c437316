"""Run every benchmark in bench/ in turn; each writes its own results file (*.md) beside it.

Usage: python bench/run_all.py [NAME ...]   (names: chunking, embed, index, eval; default: all).
Slow: the index benchmark builds 1M x 1024-d indexes and eval embeds 2,567 documents locally.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "chunking": ["bench_chunking.py"],
    "embed": ["bench_embed.py"],
    "index": ["bench_index.py"],
    "eval": ["eval_pyfaq.py"],
}


def main() -> int:
    names = sys.argv[1:] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / BENCHES[name][0]), *BENCHES[name][1:]])
        print(f"== {name}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
