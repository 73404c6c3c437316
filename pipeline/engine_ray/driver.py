"""The Ray engine's driver side: list the corpus, run the Ray Data pipeline, take its rows in corpus order.

Each row (one document) goes where the local engine puts it: the diff, RunState.admit, the cache and stream.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import time
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import ray
import ray.data

from .. import errors
from ..config import EngineConfig
from ..embedding import EmbedStats
from ..errors import ConfigError, PipelineError, StoreError
from ..records import Chunk
from ..run import RunState
from ..sources import walk_corpus
from .limiter import key_id, limiter_for
from .stages import EmbedActor, RayJob, chunk_documents, read_documents

__all__ = ["run_on_ray"]

log = logging.getLogger("pipeline.engine_ray")

# Files a reading task takes at a time; their documents stay one block, which one worker embeds in one call
# (whole documents, never split). Enough blocks that every worker keeps getting some (one that starts late
# finds work; a CPU model's workers share the work finely), few enough that an API worker's calls fill their
# requests (a call's last request is short). One huge .jsonl is one block, so one worker's. (Ray Data 2.60's
# streaming repartition, which would spread it, hangs before an actor pool: ray-project/ray#54448.)
BLOCKS_PER_WORKER = {True: 16, False: 4}  # by cpu_bound
MAX_FILES_PER_BLOCK = 64
CALLS_PER_WORKER = 4  # blocks a worker embeds at once, so its requests overlap each other's tails
READ_CPUS = 0.25  # reading and chunking are light next to embedding
# An API worker waits on the network; a CPU model's worker computes (and its engine threads itself).
API_WORKER_CPUS = 0.5
CPU_WORKER_CPUS = 0.75
NO_VECTOR = "no vector came back from the cluster"


def run_on_ray(state: RunState, settings: EngineConfig) -> tuple[EmbedStats, int]:
    """Read, chunk and embed state's corpus on the cluster; returns the embedders' stats and how many there were.

    Raises ConfigError when more workers are asked for than the cluster's CPUs hold, and the PipelineError a
    worker raised (credentials missing on a node...).
    """
    ctx, started = state.ctx, time.perf_counter()
    config, spec = ctx.config, ctx.spec
    assert config.corpus is not None
    files = list(walk_corpus(config.corpus, state.sources, follow_symlinks=config.sources.follow_symlinks))
    endpoint = str(ctx.fingerprint["endpoint"])
    cpu_bound = bool(spec.max_concurrency)
    per_worker = CPU_WORKER_CPUS if cpu_bound else API_WORKER_CPUS
    cpus = float(ray.cluster_resources().get("CPU", 0))
    fits = int((cpus - READ_CPUS) // per_worker)
    workers = settings.workers or min(int(cpus), fits)
    if workers < 1 or workers > fits:
        raise ConfigError(f"--ray-workers {workers}: the cluster has {cpus:g} CPUs; {max(fits, 0)} embedding "
                          f"workers of {per_worker:g} CPU fit beside the readers")
    limiter = None if cpu_bound else limiter_for(config, spec, endpoint)
    if limiter is not None:  # made here, so it outlives any worker; this run's settings
        ray.get(limiter.handle().configure.remote(limiter.settings), timeout=60)
    job = RayJob(config.without_secrets(), spec, ctx.settings, config.cache_dir, ctx.cache_key, endpoint,
                 key_id(config, spec, endpoint), limiter)
    stats = EmbedStats()
    seen: set[str] = set()
    if files:
        taker = _Taker(state, stats, seen)
        try:
            for batch in _dataset(files, job, state, workers, cpu_bound).iter_batches(batch_format="pyarrow",
                                                                                      batch_size=None):
                for row in batch.to_pylist():
                    taker.take(row)
        except PipelineError:
            raise
        except Exception as e:  # noqa: BLE001 - a worker's error arrives wrapped by Ray: say what it was
            raise _unwrap(e) from None
    state.diff.finish(state.previous, seen)
    state.chunked()
    stats.seconds = time.perf_counter() - started
    return stats, workers


def _dataset(files: list[tuple[Any, str, bool]], job: RayJob, state: RunState, workers: int,
             cpu_bound: bool) -> ray.data.Dataset:
    data = ray.data.DataContext.get_current()
    data.execution_options.preserve_order = True  # rows come back in corpus order, as the local engine reads
    data.enable_progress_bars = False  # the run's own bars (documents, vectors) are drawn here
    table = pa.table({"path": pa.array([os.fsencode(p) for p, _, _ in files], pa.binary()),
                      "rel": pa.array([r for _, r, _ in files], pa.string()),
                      "follow": pa.array([f for _, _, f in files], pa.bool_())})
    known = ray.put(state.known or {})
    previous = ray.put({doc_id: e["content_hash"] for doc_id, e in state.previous.items()})
    per_block = min(MAX_FILES_PER_BLOCK, max(1, -(-table.num_rows // (workers * BLOCKS_PER_WORKER[cpu_bound]))))
    ds = ray.data.from_arrow([table.slice(i, per_block) for i in range(0, table.num_rows, per_block)])
    ds = ds.map_batches(read_documents, fn_kwargs={"job": job, "known": known}, batch_format="pyarrow",
                        batch_size=None, num_cpus=READ_CPUS)
    ds = ds.map_batches(chunk_documents, fn_kwargs={"job": job, "previous": previous}, batch_format="pyarrow",
                        batch_size=None, num_cpus=READ_CPUS)
    return ds.map_batches(EmbedActor, fn_constructor_kwargs={"job": job}, batch_format="pyarrow",
                          batch_size=None, num_cpus=CPU_WORKER_CPUS if cpu_bound else API_WORKER_CPUS,
                          # No block waits queued at a busy worker while another (started later) has room.
                          compute=ray.data.ActorPoolStrategy(size=workers,
                                                             max_concurrent_calls_per_actor=CALLS_PER_WORKER,
                                                             max_tasks_in_flight_per_actor=CALLS_PER_WORKER))


class _Taker:
    """The rows, in corpus order, into the run's state: what the local engine does per document."""

    def __init__(self, state: RunState, stats: EmbedStats, seen: set[str]) -> None:
        self.state, self.stats, self.seen = state, stats, seen
        self.dimension = state.ctx.spec.dimension
        self.documents = state.progress("chunk", None)
        self.vectors = state.progress("embed", None)

    def take(self, row: dict[str, Any]) -> None:
        st = self.state
        if row["stats"] is not None:
            self.stats.add(pickle.loads(row["stats"]))
        doc_id = row["doc_id"]
        if doc_id is None:
            st.sources.merge(pickle.loads(row["report"]))
            return
        if doc_id in self.seen:  # Ray hands each output over once; were it not, no document is written twice
            log.warning("%s: came back twice from the cluster; kept once", doc_id)
            return
        self.seen.add(doc_id)
        self.documents(1)
        if not st.diff.mark(doc_id, row["content_hash"], st.previous):
            return
        if not row["changed"]:
            raise StoreError(f"{doc_id}: the cluster took it for unchanged, the driver for changed")
        metadata = orjson.loads(row["metadata"]) if row["metadata"] else {}
        chunks = [Chunk(c["chunk_id"], doc_id, row["source_path"], c["chunk_index"], c["char_start"], c["char_end"],
                        c["text"], c["token_count"], c["content_hash"], row["doc_type"], c["overlap_chars"],
                        orjson.loads(c["metadata"]) if c["metadata"] else metadata, c["context"] or "")
                  for c in row["chunks"]]
        # Asked again here: what landed since the worker looked (another batch's vectors) is no longer missing.
        missing = st.cache.missing(row["missing"]) if row["missing"] else []
        st.admit(doc_id, {"content_hash": row["content_hash"], "source_path": row["source_path"]}, chunks, missing)
        if not missing:
            return
        wanted = set(missing)
        keys: list[str] = row["vec_keys"]
        matrix = np.frombuffer(row["vectors"], dtype="<f4").reshape(len(keys), self.dimension)
        take = [i for i, k in enumerate(keys) if k in wanted]
        if take:
            st.landed([keys[i] for i in take], matrix[take].astype(np.float32))
            self.vectors(len(take))
        landed = {keys[i] for i in take}
        failed = [h for h in missing if h not in landed]
        if failed:
            for h in failed:
                self.stats.failed.setdefault(h, NO_VECTOR)
            st.stream.failed(failed)


_RAISED = re.compile(r"^pipeline\.errors\.(\w+): (.+)$", re.MULTILINE)


def _unwrap(error: BaseException) -> PipelineError:
    """The PipelineError a worker raised, out of Ray's wrappers (which keep its class and message only in
    their text: the chain is lost on the way back); else one error naming Ray's."""
    text = str(error)
    for name, message in reversed(_RAISED.findall(text)):
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, PipelineError):
            return cls(message.strip())
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return PipelineError(f"the Ray cluster failed the run: {type(error).__name__}: {lines[-1] if lines else ''}")
