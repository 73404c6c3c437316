"""Ray engine benchmark: the local engine vs --engine ray with 1 and 2 workers, on a two-node Ray cluster on
this machine; the API path against a rate-limited emulator (% of its ceiling), the local model (chunks/s).

Usage: .venv/bin/python bench/bench_ray.py [--passages N] [--rps R] [--local-passages N] [--repeat K]
Each run is the whole `pipeline embed` command (--no-index), fresh cache and output; prints one JSON line a
run, then the Markdown tables of bench/ray.md. Needs the ray extra (make test-ray installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_corpus import write_corpus  # noqa: E402

from pipeline.emulator import EmulatorProfile  # noqa: E402
from pipeline.emulator.profile import DEFAULT_CREDENTIALS  # noqa: E402
from pipeline.emulator.server import start_emulator_process  # noqa: E402
from pipeline.engine_ray.local_cluster import local_cluster  # noqa: E402

PASSAGES_PER_FILE = 100  # files, not one .jsonl: a file's documents go to one worker


def split_corpus(passages: int, root: Path) -> Path:
    """bench/embed_corpus.py's passages, PASSAGES_PER_FILE a file."""
    whole = write_corpus(root / "whole.jsonl", passages)
    corpus = root / f"corpus-{passages}"
    corpus.mkdir()
    lines = whole.read_bytes().splitlines()
    for i in range(0, len(lines), PASSAGES_PER_FILE):
        (corpus / f"part-{i // PASSAGES_PER_FILE:05d}.jsonl").write_bytes(b"\n".join(lines[i:i + PASSAGES_PER_FILE]) + b"\n")
    whole.unlink()
    return corpus


def run(corpus: Path, work: Path, model: str, engine: str, workers: int, address: str,
        env: dict[str, str]) -> dict[str, Any]:
    root = work / f"{model}-{engine}-{workers}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    args = [sys.executable, "-m", "pipeline", "embed", str(corpus), "--out", str(root / "out"), "--model", model,
            "--no-index", "--json", "--no-progress", "--engine", engine]
    if engine == "ray":
        args += ["--ray-address", address, "--ray-workers", str(workers)]
    started, started_at = time.perf_counter(), time.time()
    proc = subprocess.run(args, env={**os.environ, **env, "PIPELINE_CACHE_DIR": str(root / "cache")},
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{root.name}: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    shutil.rmtree(root, ignore_errors=True)
    return {"model": model, "engine": engine, "workers": workers if engine == "ray" else 1,
            "chunks": report["chunks"], "embedded": report["embedded"], "wall_s": wall,
            "embed_s": report["embed_seconds"], "started_at": started_at, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passages", type=int, default=8000, help="API path corpus (Embeddings: ~1.9 chunks each)")
    parser.add_argument("--rps", type=float, default=10.0, help="the emulator's requests/s (P1: 20)")
    parser.add_argument("--local-passages", type=int, default=80, help="local-model corpus")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--paths", default="api,local", help="api (the emulator), local (the local model), or both")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    rows: list[dict[str, Any]] = []
    # P1 of bench/embed.md at opts.rps requests/s: <= 100 texts a request, 150 ms + 2 ms a text, 8 in flight, 1 % 500s.
    profile = EmulatorProfile(base_latency_ms=150, per_text_latency_ms=2, max_concurrency=8, rps=opts.rps,
                              error_rate=0.01, max_texts_per_request=100, seed=1)
    ceiling = opts.rps * 100
    try:
        api_corpus = split_corpus(opts.passages, work)
        local_corpus = split_corpus(opts.local_passages, work)
        node_env = {k: v for k, v in os.environ.items() if not k.startswith(("GIGACHAT_", "PIPELINE_", "RAY_"))}
        with local_cluster(2, 1, {**node_env, "GIGACHAT_CREDENTIALS": DEFAULT_CREDENTIALS}) as cluster, \
                start_emulator_process(profile) as emu:
            env = {"GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
                   "GIGACHAT_CREDENTIALS": emu.credentials}
            for _ in range(opts.repeat):
                for engine, workers in (("local", 1), ("ray", 1), ("ray", 2)) if "api" in opts.paths else ():
                    time.sleep(2)  # the emulator's bucket refills
                    emu.reset_stats()
                    row = run(api_corpus, work, "Embeddings", engine, workers, cluster.address, env)
                    stats = emu.stats()
                    row.update(calls_s=stats["last_call_done_at"] - stats["first_call_at"],
                               start_s=stats["first_call_at"] - row.pop("started_at"),
                               requests=stats["by_path"].get("/api/v1/embeddings", 0),
                               status=stats["status_counts"], tokens=stats["tokens_issued"], ceiling=ceiling)
                    row["pct"] = 100 * row["embedded"] / row["wall_s"] / ceiling
                    row["calls_pct"] = 100 * row["embedded"] / row["calls_s"] / ceiling
                    print(orjson.dumps(row).decode(), flush=True)
                    rows.append(row)
                for engine, workers in (("local", 1), ("ray", 1), ("ray", 2)) if "local" in opts.paths else ():
                    row = run(local_corpus, work, "e5-small-local", engine, workers, cluster.address, {})
                    row.pop("started_at")
                    row["chunks_per_s"] = row["chunks"] / row["wall_s"]
                    row["embed_chunks_per_s"] = row["chunks"] / row["embed_s"]
                    print(orjson.dumps(row).decode(), flush=True)
                    rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| engine | workers | chunks | wall s | start s (to 1st call) | calls s | texts/s | % of ceiling (whole) "
          "| % of ceiling (calls) | requests | 429 | 500 | tokens | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in (r for r in rows if r["model"] == "Embeddings"):
        print(f"| {r['engine']} | {r['workers']} | {r['chunks']} | {r['wall_s']:.1f} | {r['start_s']:.1f} | "
              f"{r['calls_s']:.1f} | {r['embedded'] / r['wall_s']:.0f} | {r['pct']:.1f} % | {r['calls_pct']:.1f} % | "
              f"{r['requests']} | {r['status'].get('429', 0)} | {r['status'].get('500', 0)} | {r['tokens']} | "
              f"{r['load']:.1f} |")
    print("\n| engine | workers | chunks | wall s | chunks/s (whole) | embed phase s | chunks/s (embed phase) | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in (r for r in rows if r["model"] == "e5-small-local"):
        print(f"| {r['engine']} | {r['workers']} | {r['chunks']} | {r['wall_s']:.1f} | {r['chunks_per_s']:.2f} | "
              f"{r['embed_s']:.1f} | {r['embed_chunks_per_s']:.2f} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
