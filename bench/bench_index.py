"""Index benchmark: build through the real build_index from a snapshot-shaped Parquet file, then serve.

1. Generates N x DIM synthetic embeddings (bench/vectors_synth.py: low-rank mixture plus noise) chunk by
   chunk straight into <work>/data/vectors.parquet, shaped like a real snapshot (chunk rows, `vector` as
   fixed_size_list<float32>[DIM], the `pipeline` metadata), plus held-out queries and their exact top-10,
   computed as the chunks stream past (the full matrix is never in memory).
2. For each configuration (KIND:BUDGET), a fresh process runs pipeline.index.build_index (build time, its
   peak RSS), then another fresh process loads the index like `pipeline search` does and times single
   queries (p50, p95, one thread) and recall@10 of the held-out queries against exact search.
3. Writes <work>/results.json and the table between the markers in bench/index.md.

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_index.py [--n 1000000] [--dim 1024]
     [--configs auto:2GiB,ivf:5GiB] [--queries 1000] [--work out/bench-index]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from vectors_synth import SyntheticEmbeddings  # noqa: E402

GEN_CHUNK = 32_768
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generate(work: Path, n: int, dim: int, n_queries: int, seed: int = 0) -> Path:
    """vectors.parquet + queries.npy + truth.npy under work/data (skipped when already there for n x dim)."""
    import faiss
    import pyarrow.parquet as pq

    from pipeline.index.score import ExactTopK
    from pipeline.records import Chunk
    from pipeline.store import chunk_table

    data = work / "data"
    stamp = data / "done.json"
    want = {"n": n, "dim": dim, "queries": n_queries, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return data
    data.mkdir(parents=True, exist_ok=True)
    gen = SyntheticEmbeddings(dim, seed)
    queries = gen.chunk(0, n_queries, stream=1)
    exact = ExactTopK(queries, 10, faiss.METRIC_INNER_PRODUCT)
    meta = {"model": "synthetic", "dimension": dim, "normalize": True,
            "fingerprint": {"model": "synthetic", "dimension": dim, "seed": seed}}
    started = time.perf_counter()
    writer = None
    tmp = data / "vectors.parquet.tmp"
    for c, start in enumerate(range(0, n, GEN_CHUNK)):
        rows = min(GEN_CHUNK, n - start)
        matrix = gen.chunk(c, rows)
        chunks = [Chunk(chunk_id=f"s{i}:0", doc_id=f"s{i}", source_path=f"synthetic/{i % 97}/{i // 1000}.txt",
                        chunk_index=0, char_start=0, char_end=24, text=f"synthetic passage {i}", token_count=4,
                        content_hash=f"{i:016x}", doc_type="txt") for i in range(start, start + rows)]
        table = chunk_table(chunks, matrix, meta)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
        writer.write_table(table)
        exact.add(matrix)
        if c % 8 == 0:
            print(f"  generated {start + rows:,} / {n:,} ({time.perf_counter() - started:.0f} s)", flush=True)
    assert writer is not None
    writer.close()
    tmp.replace(data / "vectors.parquet")
    np.save(data / "queries.npy", queries)
    np.save(data / "truth.npy", exact.ids)
    stamp.write_text(json.dumps(want))
    print(f"generated {n:,} x {dim} in {time.perf_counter() - started:.0f} s, "
          f"{(data / 'vectors.parquet').stat().st_size / 2**30:.2f} GiB on disk", flush=True)
    return data


def _snapshot_for(work: Path, data: Path, label: str) -> Path:
    """A snapshot directory per configuration, its vectors.parquet a hard link to the generated file."""
    snap = work / "runs" / label
    snap.mkdir(parents=True, exist_ok=True)
    link = snap / "vectors.parquet"
    if link.exists():
        link.unlink()
    os.link(data / "vectors.parquet", link)
    return snap


def build_one(snap: Path, kind: str, budget: str) -> dict:
    """Runs in a fresh process: the real build_index, this process's peak RSS, and the peak of each step."""
    import logging
    import threading

    import psutil

    from pipeline.config import parse_size
    from pipeline.index import build_index
    from pipeline.store import Snapshot

    steps: list[tuple[float, str]] = [(time.perf_counter(), "start")]

    class StepLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.endswith(" ..."):
                steps.append((time.perf_counter(), msg.removeprefix("index: ").removesuffix(" ...")))

    logger = logging.getLogger("pipeline.index.build")
    logger.setLevel(logging.INFO)
    logger.addHandler(StepLog())
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        proc = psutil.Process()
        while not done.wait(0.2):
            samples.append((time.perf_counter(), proc.memory_info().rss))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    report = build_index(Snapshot(snap), index_type=kind, memory_budget_bytes=parse_size(budget, what="budget"))
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    by_step: dict[str, int] = {}
    for t, rss in samples:
        name = next(n for s_t, n in reversed(steps) if s_t <= t)
        by_step[name] = max(by_step.get(name, 0), rss)
    return {"report": report.__dict__, "wall_s": wall, "peak_rss": _rss_peak(), "rss_by_step": by_step}


def serve_one(snap: Path, queries_path: Path, truth_path: Path) -> dict:
    """Runs in a fresh process: load like `pipeline search`, then single queries on one thread."""
    from pipeline.index import load_index
    from pipeline.index.score import recall_at_k
    from pipeline.search import search_ids
    from pipeline.store import Snapshot

    started = time.perf_counter()
    index, rows, meta = load_index(Snapshot(snap))
    load_s = time.perf_counter() - started
    queries, truth = np.load(queries_path), np.load(truth_path)
    for q in queries[:20]:  # warm the caches
        search_ids(index, q, 10)
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        hits = search_ids(index, q, 10)
        times.append((time.perf_counter() - t) * 1000)
        found.append([i for i, _ in hits] + [-1] * (10 - len(hits)))
    return {"load_s": load_s, "p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": float(np.mean(times)), "recall_at_10": recall_at_k(np.array(found), truth),
            "queries": len(queries), "peak_rss": _rss_peak(), "search_param": meta.get("search_param")}


def _child(args: list[str]) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env)
    sys.stderr.write(out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def render(results: list[dict], n: int, dim: int) -> str:
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform.machine()}), "
             f"Python {platform.python_version()}, {n:,} x {dim} vectors, {results[0]['queries']} held-out "
             "queries; other jobs were running on the machine.", "",
             "| config | index | search param | budget (GiB) | index (GiB) | build (s) | build peak RSS (GiB) "
             "| serve RSS (GiB) | p50 (ms) | p95 (ms) | recall@10 held-out | recall@10 at build |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        rep, srv = r["build"]["report"], r["serve"]
        steps = ", ".join(f"{k} {v:.0f}" for k, v in rep["seconds"].items())
        lines.append(
            f"| `{r['config']}` | `{rep['factory']}` | {json.dumps(rep['search_param'])} "
            f"| {_gib(rep['memory_budget_bytes'])} | {_gib(rep['index_bytes'])} "
            f"| {r['build']['wall_s']:.0f} ({steps}) | {_gib(r['build']['peak_rss'])} | {_gib(srv['peak_rss'])} "
            f"| {srv['p50_ms']:.2f} | {srv['p95_ms']:.2f} | {srv['recall_at_10']:.3f} | {rep['recall_at_10']:.3f} |")
    return "\n".join(lines)


CROSSOVER_SIZES = (5_000, 10_000, 20_000, 50_000, 100_000)
CROSSOVER_TARGET = 0.95
HARD_EF_SEARCH = 384  # the tuner's choice for 15k real 1024-d chunks (the synthetic data needs far less)


def _timed(index, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    """p50 and p99 (ms) of single-query searches on one thread, after a warm-up pass."""
    import faiss

    faiss.omp_set_num_threads(1)
    for q in queries[:20]:
        index.search(q[None, :], k)
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], k)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _tuned(index, name: str, values, queries: np.ndarray, truth: np.ndarray) -> tuple[int, float]:
    """The smallest value of the search parameter whose recall@10 on held-out queries reaches the target."""
    import faiss

    from pipeline.index.score import recall_at_k

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    recall = 0.0
    for value in values:
        faiss.ParameterSpace().set_index_parameter(index, name, value)
        _, found = index.search(queries, 10)
        recall = recall_at_k(found, truth)
        if recall >= CROSSOVER_TARGET:
            return value, recall
    return values[-1], recall


def crossover(dims: list[int], sizes: list[int], n_queries: int) -> list[dict]:
    """Exact (Flat) vs ANN (HNSW32, IVF-SQ8 as `auto` would build them) single-query latency at recall@10 0.95."""
    import faiss

    from pipeline.index.score import EF_SEARCH, NPROBE
    from pipeline.index.select import _nlist

    out = []
    for dim in dims:
        gen = SyntheticEmbeddings(dim, 0)
        queries = gen.chunk(0, n_queries, stream=1)
        base = np.concatenate([gen.chunk(c, min(GEN_CHUNK, max(sizes) - s)) for c, s in
                               enumerate(range(0, max(sizes), GEN_CHUNK))])
        for n in sizes:
            x = base[:n]
            flat = faiss.IndexFlatIP(dim)
            flat.add(x)
            _, truth = flat.search(queries, 10)
            row = {"dim": dim, "n": n, "flat": _timed(flat, queries)}
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            started = time.perf_counter()
            hnsw = faiss.index_factory(dim, "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
            hnsw.add(x)
            build = time.perf_counter() - started
            ef, recall = _tuned(hnsw, "efSearch", EF_SEARCH, queries, truth)
            row["hnsw"] = {"param": ef, "recall": recall, "build_s": build, "lat": _timed(hnsw, queries)}
            hnsw.hnsw.efSearch = HARD_EF_SEARCH  # what real embeddings needed for 0.95 (15k x 1024, efSearch 384)
            row["hnsw_hard"] = _timed(hnsw, queries)
            del hnsw
            nlist = _nlist(n)
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            started = time.perf_counter()
            ivf = faiss.index_factory(dim, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
            ivf.train(x[:: max(1, n // (nlist * 40))])
            ivf.add(x)
            build = time.perf_counter() - started
            nprobe, recall = _tuned(ivf, "nprobe", [v for v in NPROBE if v <= nlist], queries, truth)
            row["ivfsq"] = {"nlist": nlist, "param": nprobe, "recall": recall, "build_s": build,
                            "lat": _timed(ivf, queries)}
            del ivf, flat
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def render_crossover(rows: list[dict], n_queries: int) -> str:
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform.machine()}), "
             f"faiss {__import__('faiss').__version__}, single-threaded search, {n_queries} held-out queries, "
             f"ANN tuned to the smallest parameter reaching recall@10 {CROSSOVER_TARGET}; other jobs shared the machine.",
             "",
             "| dim | n | Flat p50 / p99 (ms) | HNSW32 efSearch | HNSW32 p50 / p99 (ms) | HNSW32 efSearch 384 p50 / p99 "
             "(ms) | HNSW32 build (s) "
             "| IVF-SQ8 nlist, nprobe | IVF-SQ8 p50 / p99 (ms) | IVF-SQ8 build (s) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        h, v = r["hnsw"], r["ivfsq"]
        lines.append(f"| {r['dim']} | {r['n']:,} | {r['flat'][0]:.2f} / {r['flat'][1]:.2f} | {h['param']} "
                     f"({h['recall']:.3f}) | {h['lat'][0]:.2f} / {h['lat'][1]:.2f} | "
                     f"{r['hnsw_hard'][0]:.2f} / {r['hnsw_hard'][1]:.2f} | {h['build_s']:.1f} | "
                     f"{v['nlist']}, {v['param']} ({v['recall']:.3f}) | {v['lat'][0]:.2f} / {v['lat'][1]:.2f} | "
                     f"{v['build_s']:.1f} |")
    return "\n".join(lines)


UPDATE_SIZES = (10_000, 100_000)
UPDATE_WORDS = 150  # words a chunk: BM25's tokenising cost grows with them (real chunks: ~150-250)


def _update_snapshot(work: Path, name: str, gen, docs: dict[int, tuple[int, int]], texts: list[str], meta: dict):
    """A snapshot of docs (doc -> (version, vector row of the generator)), written by the store's writer."""
    from pipeline.records import Chunk
    from pipeline.store import Snapshot, chunk_table, write_table_atomic

    snap = Snapshot(work / name)
    snap.path.mkdir(parents=True, exist_ok=True)
    order = sorted(docs)
    rows = np.array([docs[d][1] for d in order])
    matrix = np.concatenate([gen.chunk(c, GEN_CHUNK) for c in range(rows.max() // GEN_CHUNK + 1)])[rows]
    chunks = [Chunk(chunk_id=f"d{d}:0", doc_id=f"d{d}", source_path=f"docs/{d}.txt", chunk_index=0, char_start=0,
                    char_end=len(texts[docs[d][1]]), text=texts[docs[d][1]], token_count=UPDATE_WORDS,
                    content_hash=f"{d}v{docs[d][0]}", doc_type="txt") for d in order]
    write_table_atomic(chunk_table(chunks, matrix, meta), snap.vectors_path)
    return snap


def update_bench(sizes: list[int], dim: int, kinds: list[str], work: Path, changed: float = 0.01) -> list[dict]:
    """Full build vs update_index of a second snapshot where `changed` of the rows differ: 60% of them edited
    (same chunk id, new text and vector), 20% removed, 20% added between existing documents."""
    import shutil

    from pipeline.index import build_index, update_index
    from pipeline.store import Snapshot

    out = []
    for n in sizes:
        gen = SyntheticEmbeddings(dim, 0)
        rng = np.random.default_rng(n)
        extra = int(n * changed) + 1
        vocab = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(3, 10))) for _ in range(20_000)]
        words = rng.zipf(1.3, size=(n + extra, UPDATE_WORDS)) % len(vocab)
        texts = [" ".join(vocab[w] for w in row) for row in words]
        meta = {"model": "synthetic", "dimension": dim, "normalize": True,
                "fingerprint": {"model": "synthetic", "dimension": dim}}
        base = work / f"update-{n}x{dim}"
        shutil.rmtree(base, ignore_errors=True)
        first = {2 * d: (0, d) for d in range(n)}
        second = dict(first)
        picked = rng.permutation(n)[:extra]
        n_edit, n_remove = int(0.6 * extra), int(0.2 * extra)
        for i, d in enumerate(picked[:n_edit]):
            second[2 * int(d)] = (1, n + i)  # a new text and vector under the same chunk id
        for d in picked[n_edit:n_edit + n_remove]:
            del second[2 * int(d)]
        for i, d in enumerate(picked[n_edit + n_remove:]):
            second[2 * int(d) + 1] = (0, n + n_edit + i)
        started = time.perf_counter()
        a = _update_snapshot(base, "a", gen, first, texts, meta)
        b = _update_snapshot(base, "b", gen, second, texts, meta)
        print(f"  {n:,} x {dim}: snapshots written in {time.perf_counter() - started:.0f} s", flush=True)
        for kind in kinds:
            prev = Snapshot(base / f"{kind}-prev")
            fresh = Snapshot(base / f"{kind}-fresh")
            updated = Snapshot(base / f"{kind}-updated")
            for snap, src in ((prev, a), (fresh, b), (updated, b)):
                snap.path.mkdir(parents=True, exist_ok=True)
                os.link(src.vectors_path, snap.vectors_path)
            build_index(prev, index_type=kind)
            full = build_index(fresh, index_type=kind)
            upd = update_index(prev, updated, index_type=kind)
            row = {"n": n, "dim": dim, "kind": kind, "changed": changed, "factory": full.factory,
                   "full_s": full.build_seconds, "full_steps": full.seconds, "update_s": upd.build_seconds,
                   "update_steps": upd.seconds, "mode": upd.mode, "mode_reason": upd.mode_reason,
                   "added": upd.added, "removed": upd.removed}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def _steps(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in seconds.items() if v >= 0.05)


def render_update(rows: list[dict]) -> str:
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform.machine()}); other jobs "
             "shared the machine.", "",
             "| n x dim | --index-type | index | full build (s) | update_index (s) | update mode | removed / added |",
             "| --- | --- | --- | ---: | ---: | --- | ---: |"]
    for r in rows:
        lines.append(f"| {r['n']:,} x {r['dim']} | {r['kind']} | `{r['factory']}` | {r['full_s']:.1f} "
                     f"({_steps(r['full_steps'])}) | {r['update_s']:.1f} ({_steps(r['update_steps'])}) | "
                     f"{r['mode']} | {r['removed']} / {r['added']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--configs", default="auto:2GiB,ivf:5GiB")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench-index")
    parser.add_argument("--no-md", action="store_true", help="Do not update bench/index.md.")
    parser.add_argument("--serve-only", action="store_true", help="Re-time the serving of configs already built.")
    sub = parser.add_subparsers(dest="cmd")
    b = sub.add_parser("build-one")
    b.add_argument("snap", type=Path)
    b.add_argument("kind")
    b.add_argument("budget")
    s = sub.add_parser("serve-one")
    s.add_argument("snap", type=Path)
    s.add_argument("data", type=Path)
    c = sub.add_parser("crossover", help="Exact vs ANN single-query latency by size: where Flat stops paying.")
    c.add_argument("--dims", default="384,1024")
    c.add_argument("--sizes", default=",".join(str(n) for n in CROSSOVER_SIZES))
    c.add_argument("--queries", type=int, default=300)
    u = sub.add_parser("update", help="Full build vs update_index after 1% of the rows changed.")
    u.add_argument("--sizes", default=",".join(str(n) for n in UPDATE_SIZES))
    u.add_argument("--kinds", default="flat,auto")
    args = parser.parse_args()
    if args.cmd == "update":
        rows = update_bench([int(n) for n in args.sizes.split(",")], args.dim, args.kinds.split(","), args.work)
        print(render_update(rows))
        return
    if args.cmd == "crossover":
        rows = crossover([int(d) for d in args.dims.split(",")], [int(n) for n in args.sizes.split(",")],
                         args.queries)
        print(render_crossover(rows, args.queries))
        return
    if args.cmd == "build-one":
        print(json.dumps(build_one(args.snap, args.kind, args.budget), default=str))
        return
    if args.cmd == "serve-one":
        print(json.dumps(serve_one(args.snap, args.data / "queries.npy", args.data / "truth.npy")))
        return

    work = args.work / f"{args.n}x{args.dim}"
    data = generate(work, args.n, args.dim, args.queries)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    for config in args.configs.split(","):
        kind, budget = config.split(":")
        label = f"{kind}-{budget}".replace(",", "_")
        snap = work / "runs" / label if args.serve_only else _snapshot_for(work, data, label)
        previous = next((r for r in results if r["config"] == config), None)
        if args.serve_only and previous is not None:
            built = previous["build"]
        else:
            print(f"== {config}: building", flush=True)
            built = _child(["build-one", str(snap), kind, budget])
        rep = built["report"]
        print(f"   {rep['factory']} {rep['search_param']} recall@10 {rep['recall_at_10']:.3f}, "
              f"{built['wall_s']:.0f} s, peak RSS {_gib(built['peak_rss'])} GiB", flush=True)
        served = _child(["serve-one", str(snap), str(data)])
        print(f"   serve: p50 {served['p50_ms']:.2f} ms, p95 {served['p95_ms']:.2f} ms, recall@10 "
              f"{served['recall_at_10']:.3f}, RSS {_gib(served['peak_rss'])} GiB", flush=True)
        results = [r for r in results if r["config"] != config]
        results.append({"config": config, "build": built, "serve": served, "queries": served["queries"]})
        results_path.write_text(json.dumps(results, indent=2, default=str))
    table = render(results, args.n, args.dim)
    print(table)
    md = HERE / "index.md"
    if not args.no_md and md.is_file() and MARK_START in md.read_text(encoding="utf-8"):
        text = md.read_text(encoding="utf-8")
        head, rest = text.split(MARK_START, 1)
        tail = rest.split(MARK_END, 1)[1]
        md.write_text(f"{head}{MARK_START}\n{table}\n{MARK_END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main()
