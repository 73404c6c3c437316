"""Sharded index build on a Ray cluster: trained once here, row ranges added by Ray tasks, lists merged here.

Shares build.py's steps (choice, samples, training, recall, files, report), so search cannot tell which built
an index; only inverted-list indexes are sharded: flat and graph choices are built by build_index, here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import ConfigError, IndexBuildError
from ..store import Snapshot, row_group_sizes
from .build import (
    BM25_MAX_ROWS,
    RECALL_K,
    IndexReport,
    _add_all,
    _Build,
    _peak_rss,
    _release_memory,
    _Timer,
    build_index,
)
from .files import SHARDS_DIR, save_faiss
from .score import ExactTopK, single_thread
from .select import READ_BUFFERS, RUNTIME_BYTES, IndexChoice, parse_factory

__all__ = ["SHARDED_KINDS", "ShardPlan", "ShardResult", "add_shard", "build_index_sharded", "plan_shards",
           "shard_ranges"]

log = logging.getLogger(__name__)

SHARDED_KINDS = ("ivf", "ivfsq", "ivfpq")  # inverted lists merge; a graph would be rebuilt whole
MAX_SHARDS = 4096
PROBE_TIMEOUT_S = 5.0
WAIT_S = 1.0
TASK_RETRIES = 2  # a task whose worker or node died is run again by Ray; it replaces its shard file whole
_ID_BYTES = 8


@dataclass(frozen=True)
class ShardPlan:
    ranges: list[tuple[int, int]]  # [start, stop) rows of each shard, in file order
    task_peak_bytes: int  # estimated peak RSS of one task: runtime, read buffers, trained index, its shard
    merge_peak_bytes: int  # estimated peak RSS of the driver while merging: runtime, whole index, one shard


@dataclass
class ShardResult:
    """What a shard task hands back: where its index is, and the small things the driver merges."""

    start: int
    stop: int
    path: str
    list_sizes: np.ndarray  # vectors in each inverted list of the shard
    exact_scores: np.ndarray  # the recall queries' exact top-k within the shard (ExactTopK.scores / ids)
    exact_ids: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int = 0  # of the worker process (one task per process: max_calls=1)
    node: str = ""


def shard_ranges(group_rows: Sequence[int], shards: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of about n/shards rows each, in file order, none empty.

    Cut at row-group starts when there are at least as many row groups as shards, so no row group is read by
    two tasks (a range ending inside a group makes the next task decode that group's head and drop it).
    """
    n = int(sum(group_rows))
    if n == 0:
        return []
    shards = max(1, min(shards, n))
    cuts = [round(i * n / shards) for i in range(1, shards)]
    if len(group_rows) >= shards:
        starts = np.cumsum([0, *group_rows])
        cuts = [int(starts[np.abs(starts - c).argmin()]) for c in cuts]
    bounds = sorted({0, n, *cuts})
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _per_row_bytes(choice: IndexChoice, n: int) -> tuple[int, float]:
    """The trained empty index's bytes (centroids, codebooks, rotation) and the bytes each vector adds."""
    dim = choice.params["dim"]
    empty = parse_factory(choice.factory, 0, dim).estimated_bytes
    return empty, (choice.estimated_bytes - empty) / max(1, n)


def plan_shards(choice: IndexChoice, n: int, group_rows: Sequence[int], budget_bytes: int, workers: int,
                shards: int | None = None) -> ShardPlan:
    """`shards` ranges if given, else one per worker, doubled until each task and the merge fit the budget.

    A task holds the runtime, its read buffers, the trained empty index, its shard's codes and ids and its
    list assignments (8 bytes a row); the driver, merging, the whole index and one shard read back.
    """
    empty, per_row = _per_row_bytes(choice, n)

    def estimate(count: int) -> tuple[list[tuple[int, int]], int, int]:
        ranges = shard_ranges(group_rows, count)
        rows = max(stop - start for start, stop in ranges)
        task = RUNTIME_BYTES + READ_BUFFERS * choice.batch_bytes + empty + int(rows * (per_row + _ID_BYTES))
        return ranges, task, RUNTIME_BYTES + choice.estimated_bytes + int(rows * per_row)

    count = shards or max(1, workers)
    ranges, task, merge = estimate(count)
    while shards is None and max(task, merge) > budget_bytes and count < min(MAX_SHARDS, n):
        count = min(MAX_SHARDS, n, count * 2)
        ranges, task, merge = estimate(count)
    return ShardPlan(ranges, task, merge)


def _node() -> str:
    """The Ray node a task runs on (several nodes may share a host); the host name outside Ray."""
    ray = sys.modules.get("ray")  # imported only inside a Ray worker: asking Ray elsewhere would start one
    if ray is not None and ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())
    return socket.gethostname()


def add_shard(trained: np.ndarray, vectors_path: str, start: int, stop: int, batch_rows: int,
              queries: np.ndarray, metric: int, shard_dir: str) -> ShardResult:
    """A Ray task's work: rows [start, stop) of vectors_path added, with their row numbers as ids, into a copy
    of the trained empty index (`trained`: faiss.serialize_index), saved as a shard file in shard_dir.

    Holds the trained index, this range's codes and ids and one read batch, never the whole matrix; also the
    exact top-k of the recall queries within the range, for the driver's recall measurement. One thread: the
    task holds one CPU of its node.
    """
    index = faiss.deserialize_index(np.ascontiguousarray(trained))
    exact = ExactTopK(queries, RECALL_K + 1, metric, offset=start)
    timer = _Timer()
    with single_thread():
        _add_all(index, Path(vectors_path), batch_rows, stop - start, exact, None, timer, rows=(start, stop))
    if index.ntotal != stop - start:
        raise IndexBuildError(f"{vectors_path}: rows {start}-{stop} gave {index.ntotal} vectors")
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    sizes = np.array([invlists.list_size(i) for i in range(invlists.nlist)], dtype=np.int64)
    name = f"shard-{start:012d}-{stop:012d}.faiss"
    with timer.step("write"):
        save_faiss(index, Path(shard_dir), name)
    del index
    _release_memory()
    return ShardResult(start, stop, str(Path(shard_dir) / name), sizes, exact.scores, exact.ids,
                       timer.seconds, _peak_rss(), _node())


def _probe(address: str) -> None:
    """A TCP connection to a host:port address, so an address where nothing listens fails in seconds (ray.init
    keeps retrying it for minutes); other forms (auto, ray://...) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        why = e.strerror or e
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers there ({why})") from None


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[Any]:
    """Ray, connected to `address` (else RAY_ADDRESS, else a new local instance, as ray.init does); a
    connection this process already has is used and left open, one made here is closed after."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs the ray extra: pip install 'pipeline[ray]'") from None
    if ray.is_initialized():
        yield ray
        return
    where = address or os.environ.get("RAY_ADDRESS") or ""
    if where:
        _probe(where)
    try:
        # log_to_driver off: the tasks' output would land on this command's stdout (and break --json)
        ray.init(address=address or None, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        where = where or "(a local Ray instance)"
        raise ConfigError(f"--ray-address {where}: cannot connect to Ray: {first}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _task_memory(ray: Any, wanted: int) -> int | None:
    """The memory a shard task reserves on its node, so a node runs only as many as it holds; None when no
    node offers that much (Ray would hold such a task forever, unscheduled)."""
    offered = [node["Resources"].get("memory", 0) for node in ray.nodes() if node.get("Alive")]
    biggest = max(offered, default=0)
    if wanted <= biggest:
        return wanted
    log.warning("index: a shard task needs ~%d MiB, more than any Ray node offers (%d MiB): run without a "
                "memory reservation", wanted >> 20, int(biggest) >> 20)
    return None


def _cause(error: Exception) -> str:
    cause = getattr(error, "cause", None) or error
    text = (str(cause).strip().splitlines() or [""])[0][:300]
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def _run_shards(ray: Any, build: _Build, plan: ShardPlan, shard_dir: Path,
                progress: Callable[[int], None] | None) -> list[ShardResult]:
    """Every shard's task, run by Ray (retried there if its worker dies); results in shard order."""
    memory = _task_memory(ray, plan.task_peak_bytes)
    options: dict[str, Any] = {"num_cpus": 1, "max_retries": TASK_RETRIES, "max_calls": 1}
    if memory:
        options["memory"] = memory
    task = ray.remote(**options)(add_shard)
    trained = ray.put(faiss.serialize_index(build.index))
    queries = ray.put(build.queries)
    path = str(build.snap.vectors_path)
    rest = (build.batch_rows, queries, build.metric, str(shard_dir))
    refs = {task.remote(trained, path, start, stop, *rest): i for i, (start, stop) in enumerate(plan.ranges)}
    results: dict[int, ShardResult] = {}
    try:
        while refs:
            # a bounded wait: a signal (--deadline, Ctrl-C) is handled between waits, not after the last task
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=WAIT_S)
            for ref in ready:
                i = refs.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayError as e:
                    start, stop = plan.ranges[i]
                    raise IndexBuildError(f"{path}: index shard of rows {start}-{stop} failed: {_cause(e)}") \
                        from None
                if progress:
                    progress(plan.ranges[i][1] - plan.ranges[i][0])
    finally:
        for ref in refs:  # a failure or --deadline: the other tasks are not left running
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    return [results[i] for i in range(len(plan.ranges))]


def _merge(build: _Build, results: list[ShardResult]) -> np.ndarray:
    """The shards' inverted lists appended, in row order, to the trained index's lists (sized exactly first,
    so they never grow by doubling); the exact top-k of the recall queries over all shards."""
    ivf = faiss.extract_index_ivf(build.index)
    invlists = faiss.downcast_InvertedLists(ivf.invlists)
    totals = np.sum([r.list_sizes for r in results], axis=0)
    for list_no, count in enumerate(totals.tolist()):
        if count:
            invlists.resize(list_no, count)  # zero-filled at its final size, then emptied: the capacity stays
            invlists.resize(list_no, 0)
    truth = ExactTopK(build.queries, RECALL_K + 1, build.metric)
    for result in results:
        shard = faiss.read_index(result.path)
        faiss.merge_into(build.index, shard, False)  # ids are already global rows: no shift
        del shard
        Path(result.path).unlink()
        _release_memory()
        truth.merge(result.exact_scores, result.exact_ids)
    return truth.ids


def build_index_sharded(
    snap: Snapshot,
    *,
    ray_address: str | None = None,
    shards: int | None = None,
    index_type: str = "auto",
    memory_budget_bytes: int = 4 << 30,
    target_recall: float = 0.95,
    progress: Callable[[int], None] | None = None,
    bm25: bool = True,
    bm25_max_rows: int = BM25_MAX_ROWS,
    batch_rows: int | None = None,
    seed: int = 0,
) -> IndexReport:
    """build_index's index, with the vectors added across a Ray cluster (`pipeline index --engine ray`).

    Here: the choice, one sampling pass and the training (the same sample as build_index, so the same
    trained quantizer for a seed). Ray tasks: each a range of rows (whole row groups when there are enough),
    added into its copy of the trained empty index and saved as a shard file beside the index (the snapshot
    must be on a file system every node sees). Here again: the shards' lists merged in row order, then tuned,
    measured and saved like build_index. `shards`: default one per cluster CPU, more when a task or the merge
    would exceed the memory budget. Flat and graph choices are built by build_index in this process.
    Raises ConfigError when Ray is missing or unreachable, IndexBuildError when a shard fails after retries.
    """
    if shards is not None and shards < 1:
        raise ConfigError(f"shards: {shards}; at least 1")
    build = _Build(snap, index_type=index_type, memory_budget_bytes=memory_budget_bytes,
                   batch_rows=batch_rows)
    shard_dir = snap.index_dir / SHARDS_DIR
    with _ray_session(ray_address) as ray:  # connected first: a wrong address fails before minutes of work
        if build.choice.kind not in SHARDED_KINDS:
            log.info("index: %s is not made of inverted lists: built in this process", build.choice.factory)
            return build_index(snap, index_type=index_type, memory_budget_bytes=memory_budget_bytes,
                               target_recall=target_recall, progress=progress, bm25=bm25,
                               bm25_max_rows=bm25_max_rows, batch_rows=batch_rows, seed=seed)
        workers = int(ray.cluster_resources().get("CPU", 1))
        plan = plan_shards(build.choice, build.n, row_group_sizes(snap.vectors_path), memory_budget_bytes,
                           workers, shards)
        log.info("index: %d shards for %d CPUs; each task ~%d MiB, the merge ~%d MiB", len(plan.ranges),
                 workers, plan.task_peak_bytes >> 20, plan.merge_peak_bytes >> 20)
        build.sample(seed)
        with build.threads():
            build.train()
        shard_dir.mkdir(parents=True, exist_ok=True)
        try:
            with build.timer.step("shards"):
                results = _run_shards(ray, build, plan, shard_dir, progress)
            with build.timer.step("merge"):
                truth = _merge(build, results)
        finally:
            shutil.rmtree(shard_dir, ignore_errors=True)
    task_peak = max(r.peak_rss_bytes for r in results)
    slowest = max(sum(r.seconds.values()) for r in results)
    nodes = len({r.node for r in results})
    tasks = f"{len(results)} Ray task{'s' * (len(results) > 1)}"
    reason = (f"sharded: {tasks} on {nodes} node(s) ({workers} CPUs), rows in ranges of "
              f"~{math.ceil(build.n / len(results))}; task peak RSS {task_peak >> 20} MiB (estimated "
              f"{plan.task_peak_bytes >> 20}), slowest task {slowest:.1f} s")
    log.info("index: %s", reason)
    return build.finish(truth, target_recall=target_recall, bm25=bm25, bm25_max_rows=bm25_max_rows,
                        mode_reason=reason,
                        estimated_peak_bytes=max(build.choice.peak_bytes, plan.merge_peak_bytes))
