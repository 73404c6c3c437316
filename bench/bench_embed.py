"""Embedding benchmark: the whole `pipeline embed` command against an emulated GigaChat, per load profile.

Bench-only. Each run starts the emulator in its own process, runs the CLI with a fresh cache, checks that
every chunk holds exactly the emulator's vector once, and accounts the machine's CPU (ours, the emulator's,
everyone else's). Also simulates the scheduler alone (no CPU work) against the same server rules.
Usage: .venv/bin/python bench/bench_embed.py [--profiles P1,P2,P3,G50,G] [--seconds S | --passages N] [--naive-passages N]
Results: printed as Markdown, raw rows in WORK/embed-results.json; bench/embed.md is written by hand from them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq

from pipeline import api
from pipeline.config import EmbeddingConfig, load_config
from pipeline.embedding import EmbedItem, embed_items
from pipeline.emulator import EmulatorProfile, start_emulator_process
from pipeline.emulator.vectors import embed_texts
from pipeline.errors import RateLimitError, RequestTooLargeError, ServerError
from pipeline.records import ModelSpec
from pipeline.store import current_snapshot

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_corpus import write_corpus  # noqa: E402


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
    # Batch growth (issue "Any corpus size on one machine"): the registry starts EmbeddingsGigaR at 50 texts.
    "G50": Case("G50", "EmbeddingsGigaR", _P1, 100, "as P1 but EmbeddingsGigaR 2560-d, --batch-size 50: the "
                "registry's 50 held fixed (before growth)", ("--batch-size", "50")),
    "G": Case("G", "EmbeddingsGigaR", _P1, 100, "as G50 without --batch-size: starts at the registry's 50 and "
              "grows while the rate binds"),
}
CHUNKS_PER_PASSAGE = {"Embeddings": 37_574 / 20_000, "EmbeddingsGigaR": 1.0}  # bench/embed.md, this corpus

def _expected_chunks(model: str, corpus: Path, cache: dict[tuple[str, Path], list[str]]) -> list[str]:
    if (model, corpus) not in cache:
        config = load_config(None, env={"GIGACHAT_CREDENTIALS": "x"}, model=model, corpus=corpus)
        cache[model, corpus] = sorted(c.chunk_id for c in api.chunk_corpus(config, corpus))
    return cache[model, corpus]


def _check(out: Path, model: str, expected_ids: list[str]) -> str:
    """'ok' when the snapshot holds each expected chunk once with the emulator's vector for its text."""
    snap = current_snapshot(out)
    if snap is None:
        return "no snapshot"
    ids: list[str] = []
    worst = 0.0
    for batch in pq.ParquetFile(snap.vectors_path).iter_batches(batch_size=2000, columns=["chunk_id", "text", "vector"]):
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


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _emulator_process() -> psutil.Process:
    children = psutil.Process().children()
    return max(children, key=lambda p: p.create_time())


def run_case(case: Case, corpus: Path, work: Path, *, variant: str, index: bool,
             expected: dict[tuple[str, Path], list[str]]) -> dict[str, Any]:
    root = work / f"{case.name}-{variant}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = root / "run.toml"
    config.write_text(f"[embedding]\nconcurrency = {1 if variant == 'naive' else 8}\n", encoding="utf-8")
    cli = ["-m", "pipeline"]
    with start_emulator_process(case.profile) as emu:
        emulator = _emulator_process()
        env = {**os.environ, "GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
               "GIGACHAT_CREDENTIALS": emu.credentials, "PIPELINE_CACHE_DIR": str(root / "cache")}
        args = [*cli, "embed", str(corpus), "--config", str(config), "--out", str(root / "out"), "--model",
                case.model, "--json", "--no-progress", *case.cli_args, *([] if index else ["--no-index"])]
        emu.reset_stats()
        load = os.getloadavg()[0]
        before, emu_before, busy_before = resource.getrusage(resource.RUSAGE_CHILDREN), emulator.cpu_times(), _busy_cpu_s()
        started, started_at = time.perf_counter(), time.time()
        proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
        wall, ended_at = time.perf_counter() - started, time.time()
        after, emu_after, busy_after = resource.getrusage(resource.RUSAGE_CHILDREN), emulator.cpu_times(), _busy_cpu_s()
        stats = emu.stats()
    if not proc.stdout.lstrip().startswith("{"):
        raise RuntimeError(f"{root.name}: the CLI failed:\n{proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    emu_cpu = (emu_after.user - emu_before.user) + (emu_after.system - emu_before.system)
    texts, status = report["embedded"], stats["status_counts"]
    row = {
        "case": case.name, "variant": variant, "chunks": report["chunks"], "texts": texts, "wall_s": wall,
        "texts_per_s": texts / wall, "ceiling": case.ceiling, "embed_s": report["embed_seconds"],
        "embed_texts_per_s": texts / report["embed_seconds"], "requests": stats["requests"],
        "429": status.get("429", 0), "500": status.get("500", 0), "401": status.get("401", 0),
        "413": status.get("413", 0), "tokens_issued": stats["tokens_issued"], "limits": report.get("limits"),
        "cpu_s": cpu, "cpu_per_1k": cpu / texts * 1000, "emulator_cpu_s": emu_cpu,
        "others_cpu_s": (busy_after - busy_before) - cpu - emu_cpu, "failed": report["failed_chunks"],
        "index_s": (report.get("index") or {}).get("build_seconds", 0.0), "load": load,
        # the wall time split by the server's clock: before its first API call, calls, after the last answer
        "start_s": stats["first_call_at"] - started_at,
        "calls_s": stats["last_call_done_at"] - stats["first_call_at"],
        "finish_s": ended_at - stats["last_call_done_at"],
        "check": _check(root / "out", case.model, _expected_chunks(case.model, corpus, expected)),
    }
    row["pct"] = 100 * row["texts_per_s"] / case.ceiling
    row["embed_pct"] = 100 * row["embed_texts_per_s"] / case.ceiling
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    shutil.rmtree(root, ignore_errors=True)  # GBs of vectors otherwise
    return row


# -- the scheduler alone: the same server rules, enforced with asyncio sleeps; no JSON, no vectors, no disk

class _SimServer:
    def __init__(self, case: Case, seed: int = 1) -> None:
        p = case.profile
        self.p, self.rng = p, random.Random(seed)
        self.tokens, self.stamp, self.in_flight = float(p.rps), time.monotonic(), 0
        self.counts = {"200": 0, "429": 0, "500": 0, "413": 0}

    async def call(self, n: int) -> None:
        p = self.p
        if self.in_flight >= p.max_concurrency:
            self.counts["429"] += 1
            raise RateLimitError("concurrency limit reached", retry_after=None)
        now = time.monotonic()
        self.tokens, self.stamp = min(p.rps, self.tokens + (now - self.stamp) * p.rps), now
        if self.tokens < 1:
            self.counts["429"] += 1
            raise RateLimitError("rate limit reached", retry_after=(1 - self.tokens) / p.rps)
        self.tokens -= 1
        self.in_flight += 1
        try:
            await asyncio.sleep(p.base_latency_ms / 1000)
            if self.rng.random() < p.error_rate:
                self.counts["500"] += 1
                raise ServerError("Internal Server Error")
            if n > p.max_texts_per_request:
                self.counts["413"] += 1
                raise RequestTooLargeError("too many texts")
            await asyncio.sleep(p.per_text_latency_ms * n / 1000)
            self.counts["200"] += 1
        finally:
            self.in_flight -= 1


class _SimProvider:
    name = "simulated"

    def __init__(self, server: _SimServer, max_batch_texts: int) -> None:
        self.server = server
        self.spec = ModelSpec(name="sim", provider="sim", kind="embed", max_input_tokens=512, dimension=4,
                              max_batch_texts=max_batch_texts)

    async def embed_batch(self, texts: list[str], *, is_query: bool = False,
                          on_received: Any = None) -> np.ndarray:
        await self.server.call(len(texts))
        return np.ones((len(texts), 4), np.float32)

    async def aclose(self) -> None:
        return None


def simulate(case: Case, texts: int, requests_per_minute: float = 0.0) -> dict[str, Any]:
    server = _SimServer(case)
    start = int(case.cli_args[1]) if case.cli_args else 50 if case.model == "EmbeddingsGigaR" else 100

    async def run() -> Any:
        async def on_batch(keys: list[str], matrix: np.ndarray) -> None:
            return None

        items = [EmbedItem(f"k{i}", "x", 5) for i in range(texts)]
        cfg = EmbeddingConfig(concurrency=8, requests_per_minute=requests_per_minute)
        return await embed_items(_SimProvider(server, start), items, cfg, on_batch=on_batch)

    started = time.perf_counter()
    stats = asyncio.run(run())
    wall = time.perf_counter() - started
    row = {"case": case.name, "rpm": requests_per_minute, "texts": texts, "wall_s": wall, "texts_per_s": texts / wall,
           "pct": 100 * texts / wall / case.ceiling, "ceiling": case.ceiling, **server.counts,
           "limits": {"texts_per_request": stats.batch_texts, "in_flight": stats.concurrency,
                      "requests_per_s": round(stats.requests_per_s, 2)}}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| profile | client | chunks | wall s | texts/s | % of ceiling | start / calls / finish s "
             "| embed phase texts/s (%) | requests | 429 | 500 | 401 | 413 | CPU s / 1k texts "
             "| CPU s: ours / emulator / others | check |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} ({r['ceiling']:.0f}/s) | {r['variant']} | {r['chunks']} | {r['wall_s']:.1f} | "
                     f"{r['texts_per_s']:.0f} | {r['pct']:.1f} % | {r['start_s']:.2f} / {r['calls_s']:.2f} / "
                     f"{r['finish_s']:.2f} | {r['embed_texts_per_s']:.0f} "
                     f"({r['embed_pct']:.1f} %) | {r['requests']} | {r['429']} | {r['500']} | {r['401']} | "
                     f"{r['413']} | {r['cpu_per_1k']:.2f} | {r['cpu_s']:.0f} / {r['emulator_cpu_s']:.0f} / "
                     f"{r['others_cpu_s']:.0f} | {r['check']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="P1,P2,P3")
    parser.add_argument("--passages", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="instead of --passages: each profile's corpus takes this long at its ceiling")
    parser.add_argument("--naive-passages", type=int, default=20_000,
                        help="passages for the naive baseline (slow; its texts/s hardly depends on size)")
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs of our client per profile (shared machines vary)")
    parser.add_argument("--no-simulate", action="store_true")
    parser.add_argument("--index", action="store_true", help="also build the index (skipped by default)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pipeline-bench-embed"))
    args = parser.parse_args()
    corpus = write_corpus(args.work / f"corpus-{args.passages}.jsonl", args.passages)
    naive_corpus = corpus
    if args.naive_passages < args.passages:
        naive_corpus = args.work / f"corpus-{args.naive_passages}-of-{args.passages}.jsonl"
        with corpus.open("rb") as src, naive_corpus.open("wb") as dst:
            for _, line in zip(range(args.naive_passages), src, strict=False):
                dst.write(line)
    rows: list[dict[str, Any]] = []
    sims: list[dict[str, Any]] = []
    expected: dict[tuple[str, Path], list[str]] = {}
    for name in args.profiles.split(","):
        case = CASES[name]
        if args.seconds:
            n = 2 * round(case.ceiling * args.seconds / CHUNKS_PER_PASSAGE[case.model] / 2)  # even: half English
            corpus = naive_corpus = write_corpus(args.work / f"corpus-{n}.jsonl", n)
        for _ in range(args.repeat):
            rows.append(run_case(case, corpus, args.work, variant="ours", index=args.index, expected=expected))
        if not args.no_naive:
            rows.append(run_case(case, naive_corpus, args.work, variant="naive", index=args.index, expected=expected))
        if not args.no_simulate:
            n = rows[-1]["chunks"]
            sims += [simulate(case, n), simulate(case, n, requests_per_minute=60 * case.profile.rps)]
    print(_table(rows))
    (args.work / "embed-results.json").write_text(json.dumps({"runs": rows, "simulated": sims}, indent=1),
                                                  encoding="utf-8")


if __name__ == "__main__":
    main()
