"""Sharded index build benchmark: one process (build_index) vs Ray tasks on a local 1- and 2-node cluster.

1. bench_index.generate: N x DIM synthetic clustered vectors (vectors_synth.py) into WORK/data/vectors.parquet
   (32,768-row groups), held-out queries and their exact top-10.
2. Each case builds the index of its own snapshot (vectors.parquet hard-linked) in a fresh driver process:
   `single` runs build_index; `ray1` / `ray2` start a Ray cluster of 1 or 2 nodes (one CPU each: `ray start
   --block` processes this script owns and stops), then run build_index_sharded on it. Meanwhile this process
   samples (psutil, every 0.2 s) the RSS of the driver and of every process of the Ray nodes: the shard tasks'
   workers, raylets, GCS and Ray's other helpers.
3. A fresh process loads each index like `pipeline search` (bench_index.py serve-one): recall@10 of the
   held-out queries against exact search, single-query p50 / p95.
4. Writes WORK/results.json and the table between the markers in bench/ray.md ("Sharded index build").

Run: OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_index_sharded.py [--n 1000000] [--dim 1024]
     [--cases single,ray1,ray2] [--budget 4GiB] [--work /tmp/bench-shards] [--keep]
Needs the ray and bench extras (pip install -e '.[ray,bench]'). Without --keep, WORK is deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import bench_index  # noqa: E402

MARK_START, MARK_END = "<!-- shards:start -->", "<!-- shards:end -->"
SAMPLE_S = 0.2


def build_one(snap: Path, case: str, address: str, budget: str, index_type: str) -> dict:
    """Runs in the fresh driver process: the real build, its report, wall time and this process's peak RSS."""
    from pipeline.config import parse_size
    from pipeline.index import build_index
    from pipeline.index.sharded import build_index_sharded
    from pipeline.store import Snapshot

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    budget_bytes = parse_size(budget, what="budget")
    started = time.perf_counter()
    if case == "single":
        report = build_index(Snapshot(snap), index_type=index_type, memory_budget_bytes=budget_bytes)
    else:
        report = build_index_sharded(Snapshot(snap), ray_address=address, index_type=index_type,
                                     memory_budget_bytes=budget_bytes)
    return {"report": report.__dict__, "wall_s": time.perf_counter() - started,
            "peak_rss": bench_index._rss_peak()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def ray_cluster(nodes: int, temp: Path) -> Iterator[tuple[str, list[int]]]:
    """A local Ray cluster of `nodes` one-CPU nodes: (address, the pids of their `ray start --block`)."""
    import ray

    port = _free_port()
    address = f"127.0.0.1:{port}"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats", "--temp-dir", str(temp),
              "--object-store-memory", str(256 << 20), "--node-ip-address", "127.0.0.1"]
    procs: list[subprocess.Popen] = []
    log = open(temp / "nodes.log", "ab")  # noqa: SIM115 - closed below
    try:
        for i in range(nodes):
            head = ["--head", "--port", str(port), "--include-dashboard=false"]
            where = head if i == 0 else ["--address", address]
            procs.append(subprocess.Popen([ray_bin, "start", *where, *common, "--dashboard-agent-listen-port",
                                           str(_free_port())], stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
            if i == 0:
                for _ in range(240):
                    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                        break
                    time.sleep(0.5)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        for _ in range(240):
            if len([n for n in ray.nodes() if n["Alive"]]) == nodes:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the Ray cluster did not come up: see {temp / 'nodes.log'}")
        ray.shutdown()
        yield address, [p.pid for p in procs]
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(5)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


class Sampler:
    """Peak RSS per process of a process tree, sampled: the driver, and every descendant of the Ray nodes."""

    def __init__(self, driver: int, node_pids: list[int]) -> None:
        self.driver, self.node_pids = driver, node_pids
        self.peaks: dict[int, int] = {}
        self.tasks: set[int] = set()  # the workers seen running a shard task (process title ray::add_shard)
        self.total_peak = 0  # all of them together, at one instant
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _procs(self) -> list:
        import psutil

        procs = []
        for pid in [self.driver, *self.node_pids]:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
        return procs

    def _run(self) -> None:
        import psutil

        while not self._done.wait(SAMPLE_S):
            total = 0
            for proc in self._procs():
                with contextlib.suppress(psutil.Error):
                    rss = proc.memory_info().rss
                    total += rss
                    self.peaks[proc.pid] = max(rss, self.peaks.get(proc.pid, 0))
                    if "add_shard" in " ".join(proc.cmdline()):
                        self.tasks.add(proc.pid)
            self.total_peak = max(self.total_peak, total)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def summary(self) -> dict:
        others = {pid: peak for pid, peak in self.peaks.items()
                  if pid != self.driver and pid not in self.node_pids}
        return {"driver": self.peaks.get(self.driver, 0),
                "tasks": sorted((peak for pid, peak in others.items() if pid in self.tasks), reverse=True),
                "ray_own_max": max((p for pid, p in others.items() if pid not in self.tasks), default=0),
                "total": self.total_peak, "processes": {str(pid): peak for pid, peak in self.peaks.items()}}


def run_case(case: str, work: Path, data: Path, budget: str, index_type: str) -> dict:
    snap = work / "runs" / case
    shutil.rmtree(snap, ignore_errors=True)
    snap.mkdir(parents=True)
    os.link(data / "vectors.parquet", snap / "vectors.parquet")
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    nodes = {"single": 0, "ray1": 1, "ray2": 2}[case]
    with contextlib.ExitStack() as stack:
        address, node_pids, cluster_s = "", [], 0.0
        if nodes:
            temp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # Ray's socket paths must stay short
            stack.callback(shutil.rmtree, temp, ignore_errors=True)
            started = time.perf_counter()
            address, node_pids = stack.enter_context(ray_cluster(nodes, temp))
            cluster_s = time.perf_counter() - started
        started = time.perf_counter()
        driver = subprocess.Popen([sys.executable, __file__, "build-one", str(snap), case, address, budget,
                                   index_type],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        with Sampler(driver.pid, node_pids) as sampler:
            out, err = driver.communicate()
        wall = time.perf_counter() - started
    sys.stderr.write(err[-3000:])
    if driver.returncode:
        raise RuntimeError(f"{case}: the build failed (exit {driver.returncode})")
    built = json.loads(out.strip().splitlines()[-1])
    served = bench_index._child(["serve-one", str(snap), str(data)])
    shutil.rmtree(snap, ignore_errors=True)  # 1 GB of index a case
    return {"case": case, "nodes": nodes, "cluster_start_s": cluster_s, "wall_s": wall, "build": built,
            "rss": sampler.summary(), "serve": served}


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def render(results: list[dict], n: int, dim: int, budget: str) -> str:
    load = os.getloadavg()[0]
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores ({platform.machine()}), Python "
             f"{platform.python_version()}, {n:,} x {dim} vectors, budget {budget}, "
             f"{results[0]['serve']['queries']} held-out queries; the machine was shared with other jobs "
             f"(load average {load:.1f} at the end).", "",
             "| case | index | search param | build wall (s) | steps (s) | driver peak RSS (GiB) "
             "| task peak RSS (GiB, each) | Ray's own processes, max (GiB) | all processes at once (GiB) "
             "| recall@10 held-out | recall@10 at build | p50 (ms) |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        rep, rss, srv = r["build"]["report"], r["rss"], r["serve"]
        steps = ", ".join(f"{k} {v:.0f}" for k, v in rep["seconds"].items())
        tasks = ", ".join(_gib(t) for t in rss["tasks"]) or "-"
        lines.append(
            f"| `{r['case']}` | `{rep['factory']}` | {json.dumps(rep['search_param'])} | {r['wall_s']:.0f} "
            f"| {steps} "
            f"| {_gib(rss['driver'])} | {tasks} | {_gib(rss['ray_own_max']) if r['nodes'] else '-'} "
            f"| {_gib(rss['total'])} | {srv['recall_at_10']:.3f} | {rep['recall_at_10']:.3f} "
            f"| {srv['p50_ms']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--cases", default="single,ray1,ray2")
    parser.add_argument("--budget", default="4GiB")
    parser.add_argument("--index-type", default="auto",
                        help="auto picks IVF only from 500k vectors (smoke runs: ivfsq)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-shards"))
    parser.add_argument("--keep", action="store_true", help="Keep WORK (the generated vectors) afterwards.")
    parser.add_argument("--no-md", action="store_true")
    sub = parser.add_subparsers(dest="cmd")
    b = sub.add_parser("build-one")
    b.add_argument("snap", type=Path)
    b.add_argument("case")
    b.add_argument("address")
    b.add_argument("budget")
    b.add_argument("index_type")
    args = parser.parse_args()
    if args.cmd == "build-one":
        built = build_one(args.snap, args.case, args.address, args.budget, args.index_type)
        print(json.dumps(built, default=str))
        return

    work = args.work / f"{args.n}x{args.dim}"
    try:
        data = bench_index.generate(work, args.n, args.dim, args.queries)
        results = []
        for case in args.cases.split(","):
            print(f"== {case}", flush=True)
            result = run_case(case, work, data, args.budget, args.index_type)
            rep, rss = result["build"]["report"], result["rss"]
            print(f"   {rep['factory']} {rep['search_param']}: {result['wall_s']:.0f} s, driver "
                  f"{_gib(rss['driver'])} GiB, tasks {[_gib(t) for t in rss['tasks']]} GiB, recall@10 "
                  f"held-out "
                  f"{result['serve']['recall_at_10']:.3f}; {rep['mode_reason']}", flush=True)
            results.append(result)
            (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
        table = render(results, args.n, args.dim, args.budget)
        print(table)
        shutil.copy(work / "results.json", Path(tempfile.gettempdir()) / "bench-shards-results.json")
        md = HERE / "ray.md"
        if not args.no_md and md.is_file() and MARK_START in md.read_text(encoding="utf-8"):
            text = md.read_text(encoding="utf-8")
            head, rest = text.split(MARK_START, 1)
            tail = rest.split(MARK_END, 1)[1]
            md.write_text(f"{head}{MARK_START}\n{table}\n{MARK_END}{tail}", encoding="utf-8")
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
