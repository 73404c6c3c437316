"""Scale benchmark: `pipeline embed`, `index` and `reindex` (after 1% of the documents are edited) at 10k,
100k and 1M chunks, against `pipeline emulator` at zero latency and no limits: wall time and peak RSS.

Bench-only. Each command runs as its own process (peak RSS from wait4), on a corpus of documents of 80-300
words in 50 folders, English and Russian; every run is checked: each chunk once, with the emulator's vector
(all rows up to --check-all rows, a sample above), and the reindex's rows equal a from-scratch chunking.
Usage: .venv/bin/python bench/bench_scale.py --docs 6600,66000,660000 [--work DIR] [--keep]
Results: printed as Markdown, raw rows in WORK/scale-results.json; bench/scale.md is written from them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.emulator import EmulatorProfile, start_emulator_process
from pipeline.emulator.vectors import embed_texts
from pipeline.store import current_snapshot

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chunking import english_text, russian_text  # noqa: E402

MODEL = "Embeddings"
FOLDERS = 50
_WORD = re.compile(r"\S+\s*")


def _pool(lang: str, chars: int = 6_000_000) -> list[str]:
    text = english_text(chars, seed=11) if lang == "en" else russian_text(chars, seed=12)
    return _WORD.findall(text)


def write_corpus(root: Path, docs: int, seed: int = 5) -> Path:
    """docs files of 80-300 words in FOLDERS folders (reused when already there with that many files)."""
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == str(docs):
        return root
    shutil.rmtree(root, ignore_errors=True)
    pools = {"en": _pool("en"), "ru": _pool("ru")}
    rng = random.Random(seed)
    for f in range(FOLDERS):
        (root / f"f{f:02d}").mkdir(parents=True)
    for i in range(docs):
        lang = "en" if i % 2 else "ru"
        words = pools[lang]
        n = rng.randint(80, 300)
        at = rng.randrange(0, len(words) - n)
        body = "".join(words[at:at + n]).strip()
        (root / f"f{i % FOLDERS:02d}" / f"doc{i:07d}.txt").write_text(f"Document {i}. {body}\n", encoding="utf-8")
    marker.write_text(str(docs))
    return root


def edit_share(root: Path, share: float, seed: int = 9) -> int:
    """Append a sentence to `share` of the documents (their content changes, their names stay)."""
    files = sorted(root.glob("f*/doc*.txt"))
    picked = random.Random(seed).sample(files, max(1, int(len(files) * share)))
    for path in picked:
        with path.open("a", encoding="utf-8") as f:
            f.write(f"Edited at {time.time_ns()}.\n")
    return len(picked)


def run_measured(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One CLI command in its own process: exit code, wall seconds, peak RSS (MB, from wait4), its output."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Read the pipes in threads so a chatty child cannot block; then reap it ourselves for its rusage.
    import threading

    chunks: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        chunks[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in readers:
        t.start()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    wall = time.perf_counter() - started
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "stdout": chunks.get("out", ""), "stderr": chunks.get("err", "")[-2000:]}


def check(out: Path, check_all: int, seed: int = 3) -> dict[str, Any]:
    """Each chunk once, with the emulator's vector for its text (every row, or a sample past check_all)."""
    snap = current_snapshot(out)
    assert snap is not None
    ids: list[str] = []
    worst = 0.0
    checked = 0
    source = pq.ParquetFile(snap.vectors_path)
    n = source.metadata.num_rows
    rate = 1.0 if n <= check_all else check_all / n
    rng = np.random.default_rng(seed)
    for batch in source.iter_batches(batch_size=4096, columns=["chunk_id", "text", "vector"]):
        ids += batch.column(0).to_pylist()
        keep = np.flatnonzero(rng.random(batch.num_rows) < rate)
        if not len(keep):
            continue
        texts = [batch.column(1)[int(i)].as_py() for i in keep]
        got = batch.column(2).flatten().to_numpy().reshape(batch.num_rows, -1)[keep]
        want = embed_texts(MODEL, texts)
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        worst = max(worst, float(np.abs(got - want).max()))
        checked += len(keep)
    return {"rows": n, "unique": len(set(ids)), "checked": checked, "max_abs_diff": worst,
            "ok": len(ids) == len(set(ids)) and worst < 2e-6}


def expected_ids(corpus: Path, env: dict[str, str]) -> set[str]:
    """The chunk ids a from-scratch build of the corpus has (pipeline chunk --json, streamed)."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "chunk", str(corpus), "--model", MODEL, "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    ids = {json.loads(line)["chunk_id"] for line in proc.stdout}
    proc.wait()
    return ids


def snapshot_ids(out: Path) -> set[str]:
    snap = current_snapshot(out)
    assert snap is not None
    ids: set[str] = set()
    for batch in pq.ParquetFile(snap.vectors_path).iter_batches(batch_size=65536, columns=["chunk_id"]):
        ids.update(batch.column(0).to_pylist())
    return ids


def bench(docs: int, work: Path, check_all: int, keep: bool) -> dict[str, Any]:
    corpus = write_corpus(work / f"corpus-{docs}", docs)
    out, cache = work / f"out-{docs}", work / f"cache-{docs}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    row: dict[str, Any] = {"docs": docs}
    with start_emulator_process(EmulatorProfile()) as emu:
        env = {**os.environ, "GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
               "GIGACHAT_CREDENTIALS": emu.credentials, "PIPELINE_CACHE_DIR": str(cache)}
        common = ["--out", str(out), "--model", MODEL, "--no-progress", "--json"]
        embed = run_measured(["embed", str(corpus), "--no-index", *common], env)
        assert embed["rc"] == 0, embed["stderr"]
        report = json.loads(embed["stdout"])
        row["chunks"] = report["chunks"]
        row["embed"] = {k: embed[k] for k in ("wall_s", "peak_rss_mb")} | {
            "chunks_per_s": round(report["chunks"] / embed["wall_s"])}
        row["embed_check"] = check(out, check_all)
        index = run_measured(["index", "--out", str(out), "--json"], env)
        assert index["rc"] == 0, index["stderr"]
        ix = json.loads(index["stdout"])
        row["index"] = {k: index[k] for k in ("wall_s", "peak_rss_mb")} | {
            "factory": ix.get("factory"), "index_bytes_mb": round(ix.get("index_bytes", 0) / 2**20)}
        edited = edit_share(corpus, 0.01)
        reindex = run_measured(["reindex", str(corpus), *common], env)
        assert reindex["rc"] == 0, reindex["stderr"]
        rr = json.loads(reindex["stdout"])
        row["reindex"] = {k: reindex[k] for k in ("wall_s", "peak_rss_mb")} | {
            "edited_docs": edited, "embedded": rr["embedded"], "unread_files": rr.get("unread"),
            "chunk_s": round(rr["chunk_seconds"], 1), "embed_s": round(rr["embed_seconds"], 1),
            "index_s": round(rr["index_seconds"], 1), "index_mode": (rr.get("index") or {}).get("mode"),
            "index_reason": (rr.get("index") or {}).get("mode_reason")}
        row["reindex_check"] = check(out, check_all)
        want = expected_ids(corpus, env)
        got = snapshot_ids(out)
        row["reindex_check"]["equals_scratch_ids"] = want == got
        row["reindex_check"]["ok"] = row["reindex_check"]["ok"] and want == got
    full = row["embed"]["wall_s"] + row["index"]["wall_s"]
    row["reindex_share_of_full"] = round(row["reindex"]["wall_s"] / full, 3)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", default="6600,66000", help="comma-separated document counts")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pipeline-scale"))
    parser.add_argument("--check-all", type=int, default=200_000, help="check every row up to this many")
    parser.add_argument("--keep", action="store_true", help="keep the output and cache directories")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for docs in (int(d) for d in args.docs.split(",")):
        row = bench(docs, args.work, args.check_all, args.keep)
        print(json.dumps(row), flush=True)
        rows.append(row)
        (args.work / "scale-results.json").write_text(json.dumps(rows, indent=2))
    print("\n| docs | chunks | embed s / MB | index s / MB (factory) | reindex 1% s / MB | reindex / full | checks |")
    print("|---:|---:|---|---|---|---:|---|")
    for r in rows:
        print(f"| {r['docs']:,} | {r['chunks']:,} | {r['embed']['wall_s']} / {r['embed']['peak_rss_mb']} | "
              f"{r['index']['wall_s']} / {r['index']['peak_rss_mb']} ({r['index']['factory']}) | "
              f"{r['reindex']['wall_s']} / {r['reindex']['peak_rss_mb']} ({r['reindex']['index_mode']}) | "
              f"{r['reindex_share_of_full']:.1%} | {'ok' if r['embed_check']['ok'] and r['reindex_check']['ok'] else 'FAIL'} |")


if __name__ == "__main__":
    main()
