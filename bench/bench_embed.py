"""Embedding benchmark: the whole `pipeline embed` command against an emulated GigaChat, per load profile.

Bench-only. Each profile runs the emulator in its own process, then the CLI (ours, and a naive one request
at a time) with a fresh cache, checks that every chunk holds exactly the emulator's vector, and writes a
Markdown table to bench/embed.md. Usage: .venv/bin/python bench/bench_embed.py [--profiles P1,P2,P3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline import api
from pipeline.config import load_config
from pipeline.emulator import EmulatorProfile, start_emulator_process
from pipeline.emulator.vectors import embed_texts
from pipeline.store import current_snapshot

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_corpus import write_corpus  # noqa: E402

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    profile: EmulatorProfile
    batch_size: int  # texts per request the server takes: what the ceiling assumes
    note: str
    cli_args: tuple[str, ...] = ()

    @property
    def ceiling(self) -> float:
        """texts/s the server allows: requests/s (rps, or in-flight / latency) x texts per request."""
        p = self.profile
        latency_s = (p.base_latency_ms + p.per_text_latency_ms * self.batch_size) / 1000
        by_concurrency = p.max_concurrency / latency_s if p.max_concurrency else float("inf")
        return min(p.rps or float("inf"), by_concurrency) * self.batch_size


_P1 = EmulatorProfile(base_latency_ms=150, per_text_latency_ms=2, max_concurrency=8, rps=20, error_rate=0.01,
                      max_texts_per_request=100, token_ttl_s=60, seed=1)
CASES = {
    "P1": Case("P1", "Embeddings", _P1, 100, "<=100 texts/request, 150 ms + 2 ms/text, 8 in flight, 20 rps, "
                                             "1% 500s, token 60 s"),
    "P2": Case("P2", "Embeddings", replace(_P1, max_texts_per_request=20), 20,
               "as P1 but <=20 texts/request: we start at the registry's 100 and learn 20 from 413s"),
    "P3": Case("P3", "EmbeddingsGigaR", replace(_P1, error_rate=0.05, token_ttl_s=30), 100,
               "EmbeddingsGigaR 2560-d, 5% 500s, token 30 s; --batch-size 100 (the registry says 50)",
               ("--batch-size", "100")),
}


def _expected_chunks(model: str, corpus: Path, cache: dict[str, list[str]]) -> list[str]:
    if model not in cache:
        config = load_config(None, env={"GIGACHAT_CREDENTIALS": "x"}, model=model, corpus=corpus)
        cache[model] = sorted(c.chunk_id for c in api.chunk_corpus(config, corpus))
    return cache[model]


def _check(out: Path, model: str, expected_ids: list[str]) -> str:
    """'ok' when the snapshot holds each expected chunk once with the emulator's vector for its text."""
    snap = current_snapshot(out)
    if snap is None:
        return "no snapshot"
    pf = pq.ParquetFile(snap.vectors_path)
    ids: list[str] = []
    worst = 0.0
    for batch in pf.iter_batches(batch_size=2000, columns=["chunk_id", "text", "vector"]):
        ids += batch.column(0).to_pylist()
        texts = batch.column(1).to_pylist()
        got = batch.column(2).flatten().to_numpy().reshape(len(texts), -1)
        want = embed_texts(model, texts)
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        worst = max(worst, float(np.abs(got - want).max()))
    if len(ids) != len(set(ids)):
        return f"{len(ids) - len(set(ids))} duplicate rows"
    if sorted(ids) != expected_ids:
        return f"{len(set(expected_ids) - set(ids))} chunks missing"
    return "ok" if worst < 2e-6 else f"vectors differ by up to {worst:.2g}"


def _run_cli(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any] | None, float, float, str]:
    """(json report, wall s, CPU s of the child, stderr tail)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    cli = [os.environ["BENCH_CLI"]] if os.environ.get("BENCH_CLI") else ["-m", "pipeline"]
    proc = subprocess.run([sys.executable, *cli, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(proc.stdout) if proc.stdout.lstrip().startswith("{") else None
    return report, wall, cpu, proc.stderr[-1500:]


def run_case(case: Case, corpus: Path, work: Path, *, naive: bool, index: bool,
             expected: dict[str, list[str]]) -> dict[str, Any]:
    tag = f"{case.name}-{'naive' if naive else 'ours'}"
    root = work / tag
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = root / "run.toml"
    config.write_text(f"[embedding]\nconcurrency = {1 if naive else 8}\n", encoding="utf-8")
    with start_emulator_process(case.profile) as emu:
        env = {**os.environ, "GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
               "GIGACHAT_CREDENTIALS": emu.credentials, "PIPELINE_CACHE_DIR": str(root / "cache")}
        args = ["embed", str(corpus), "--config", str(config), "--out", str(root / "out"), "--model", case.model,
                "--json", "--no-progress"]
        args += case.cli_args
        if not index:
            args.append("--no-index")
        emu.reset_stats()
        load = os.getloadavg()[0]
        report, wall, cpu, stderr = _run_cli(args, env)
        stats = emu.stats()
    if report is None:
        raise RuntimeError(f"{tag}: the CLI failed:\n{stderr}")
    texts = report["embedded"]
    status = stats["status_counts"]
    row = {
        "case": case.name, "variant": "naive (1 in flight)" if naive else "pipeline embed", "chunks": report["chunks"],
        "texts": texts, "wall_s": wall, "texts_per_s": texts / wall, "ceiling": case.ceiling,
        "embed_s": report["embed_seconds"], "embed_texts_per_s": texts / report["embed_seconds"],
        "requests": stats["requests"], "429": status.get("429", 0), "500": status.get("500", 0),
        "401": status.get("401", 0), "413": status.get("413", 0), "tokens_issued": stats["tokens_issued"],
        "cpu_s": cpu, "cpu_per_1k": cpu / texts * 1000, "failed": report["failed_chunks"],
        "index_s": (report.get("index") or {}).get("build_seconds", 0.0), "load": load,
        "check": _check(root / "out", case.model, _expected_chunks(case.model, corpus, expected)),
    }
    row["pct"] = 100 * row["texts_per_s"] / case.ceiling
    row["embed_pct"] = 100 * row["embed_texts_per_s"] / case.ceiling
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    shutil.rmtree(root / "cache", ignore_errors=True)  # GBs of vectors otherwise
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| profile | client | chunks | wall s | texts/s | % of ceiling | embed phase texts/s (%) | requests "
            "| 429 | 500 | 401 | 413 | CPU s / 1k texts | every chunk once, emulator's vector |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['case']} (ceiling {r['ceiling']:.0f}/s) | {r['variant']} | {r['chunks']} | "
                     f"{r['wall_s']:.1f} | {r['texts_per_s']:.0f} | {r['pct']:.1f} % | "
                     f"{r['embed_texts_per_s']:.0f} ({r['embed_pct']:.1f} %) | {r['requests']} | {r['429']} | "
                     f"{r['500']} | {r['401']} | {r['413']} | {r['cpu_per_1k']:.2f} | {r['check']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="P1,P2,P3")
    parser.add_argument("--passages", type=int, default=20_000)
    parser.add_argument("--naive-passages", type=int, default=20_000,
                        help="passages for the naive baseline (it is slow; its texts/s does not depend on size)")
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--index", action="store_true", help="also build the index (the default skips it)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pipeline-bench-embed"))
    parser.add_argument("--results", type=Path, default=HERE / "embed.md")
    args = parser.parse_args()
    corpus = write_corpus(args.work / f"corpus-{args.passages}.jsonl", args.passages)
    naive_corpus = corpus
    if args.naive_passages < args.passages:
        naive_corpus = args.work / f"corpus-{args.naive_passages}-of-{args.passages}.jsonl"
        if not naive_corpus.exists():
            with corpus.open("rb") as src, naive_corpus.open("wb") as dst:
                for _, line in zip(range(args.naive_passages), src, strict=False):
                    dst.write(line)
    rows: list[dict[str, Any]] = []
    expected: dict[str, list[str]] = {}
    for name in args.profiles.split(","):
        case = CASES[name]
        rows.append(run_case(case, corpus, args.work, naive=False, index=args.index, expected=expected))
        if not args.no_naive:
            rows.append(run_case(case, naive_corpus, args.work, naive=True, index=args.index, expected={}))
    loads = ", ".join(f"{r['load']:.1f}" for r in rows)
    env = (f"{time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, {os.cpu_count()} cores, "
           f"1-minute load average at the start of each run: {loads}")
    print(_table(rows))
    (args.work / "embed-results.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(env)


if __name__ == "__main__":
    main()
