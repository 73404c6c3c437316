"""The answer check as a measurement: every question of a questions file asked offline over data/; prints a
Markdown table of which answers contain their phrase, with length, sources and time (bench/answers.md).

Usage: python bench/bench_answers.py [--questions FILE] [--out DIR] [--max-chars N] [--show]
DIR (default out/answers-data) is data/ embedded with e5-small-local; it is made on first use (1-3 min).
Only `api.ask` and `load_config` are used, so `PYTHONPATH=<another checkout> python bench/bench_answers.py`
measures that checkout's answer on the same questions.
"""

from __future__ import annotations

import argparse
import time
import tomllib
from dataclasses import replace
from pathlib import Path

from pipeline import api
from pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, default=ROOT / "tests" / "answer" / "answer_check.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "answers-data")
    parser.add_argument("--max-chars", type=int, help="[ask] answer_max_chars (default: the config's)")
    parser.add_argument("--show", action="store_true", help="print each answer under the table")
    args = parser.parse_args()
    questions = tomllib.loads(args.questions.read_text(encoding="utf-8"))["question"]
    if not (args.out / "CURRENT").is_file():
        api.embed(load_config(None, model="e5-small-local", corpus=ROOT / "data", out_dir=args.out))
    config = load_config(None, out_dir=args.out)
    if args.max_chars:
        config = replace(config, ask=replace(config.ask, answer_max_chars=args.max_chars))
    rows, shown, passed = [], [], 0
    for item in questions:
        started = time.perf_counter()
        answer = api.ask(config, item["q"], chat_model="none")
        seconds = time.perf_counter() - started
        ok = any(p.lower() in answer.text.lower() for p in item["expect"])
        passed += ok
        rows.append(f"| {item['q']} | {' / '.join(item['expect'])} | {'yes' if ok else '**no**'} | "
                    f"{len(answer.text)} | {len(answer.sources)} | {seconds:.1f} |")
        shown.append(f"### {item['q']}\n\n```\n{answer.text}\n```\n")
    print(f"{passed}/{len(questions)} answers contain their phrase ({args.questions.name})\n")
    print("| question | phrase (any) | found | chars | sources | s |\n| --- | --- | --- | ---: | ---: | ---: |")
    print("\n".join(rows))
    if args.show:
        print("\n" + "\n".join(shown))


if __name__ == "__main__":
    main()
