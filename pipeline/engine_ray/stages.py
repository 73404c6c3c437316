"""The Ray engine's stages: read and chunk (Ray tasks over files), embed (an actor pool), as Arrow batches.

A row is one whole document; the driver (driver.py) diffs, writes the cache and the snapshot from them.
Nothing here writes: the vector cache is only looked up (read-only), vectors travel back in the rows.
"""

from __future__ import annotations

import logging
import os
import pickle
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import ray

from ..cache import VectorCache
from ..chunking import ChunkSettings, chunk_document, split_for_retry
from ..config import Config
from ..embedding import EmbedItem, EmbedStats, embed_items
from ..errors import ConfigError
from ..limiter import Limiter, LocalLimiter
from ..providers import EmbeddingProvider, embedding_provider
from ..records import Document, ModelSpec
from ..sources import SourceReport, read_file
from ..tokens import token_counter_for
from .limiter import LimiterRef, RemoteLimiter, key_id

__all__ = ["CHUNK_TYPE", "EmbedActor", "RayJob", "chunk_documents", "read_documents"]

log = logging.getLogger("pipeline.engine_ray")

CHUNK_TYPE = pa.struct([("chunk_id", pa.string()), ("chunk_index", pa.int32()), ("char_start", pa.int64()),
                        ("char_end", pa.int64()), ("text", pa.large_string()), ("token_count", pa.int32()),
                        ("content_hash", pa.string()), ("overlap_chars", pa.int32()), ("context", pa.string()),
                        ("metadata", pa.string())])  # a chunk's own metadata (its heading path), when not its document's
# A row with no doc_id carries the SourceReport of the files a task read (pickled): files that gave no
# document (skipped, empty) are counted too. A document row's `changed` is false when the previous snapshot
# has its content hash: it travels as ids only, for the driver's diff and shrink check.
_DOC_FIELDS = [("doc_id", pa.string()), ("source_path", pa.string()), ("doc_type", pa.string()),
               ("content_hash", pa.string()), ("metadata", pa.string()), ("report", pa.binary())]
DOCS = pa.schema([*_DOC_FIELDS, ("text", pa.large_string()), ("headings", pa.string())])
CHUNKED = pa.schema([*_DOC_FIELDS, ("changed", pa.bool_()), ("chunks", pa.list_(CHUNK_TYPE))])
# Embedded: `missing` the hashes the cache lacked when the worker looked, `vec_keys` those it embedded for this
# document (a hash the batch shares goes with its first document), `vectors` their raw float32 rows,
# `failed` those that could not be embedded, `stats` the worker's EmbedStats (on a batch's first row).
EMBEDDED = pa.schema([*CHUNKED, ("missing", pa.list_(pa.string())), ("vec_keys", pa.list_(pa.string())),
                      ("vectors", pa.large_binary()), ("failed", pa.list_(pa.string())), ("stats", pa.binary())])


@dataclass(frozen=True)
class RayJob:
    """What the workers of one run work from. No secret: each worker reads its own from its environment."""

    config: Config  # Config.without_secrets()
    spec: ModelSpec
    settings: ChunkSettings
    cache_dir: Path
    cache_key: str
    endpoint: str
    key_id: str  # the driver's credential (a hash): a worker holding another one refuses to embed
    limiter: LimiterRef | None  # the key's shared limits; None: a CPU model, limited within each worker


_resolved: dict[str, Any] = {}  # object ref -> its value, once per worker process (a manifest can be large)


def _get(ref: Any) -> Any:
    key = ref.hex()
    if key not in _resolved:
        if len(_resolved) >= 4:
            _resolved.clear()  # a run's two values at a time, not every run's a reused worker saw
        _resolved[key] = ray.get(ref)
    return _resolved[key]


def read_documents(batch: pa.Table, job: RayJob, known: Any) -> pa.Table:
    """Files (path bytes, escaped relative path, follow links) -> their documents, after one report row.

    A file whose size and mtime are those `known` (an object ref) recorded is not read: its documents
    come back as ids and previous hashes (sources.read_file).
    """
    report = SourceReport()
    known_files = _get(known)
    docs: list[Document] = []
    for path, rel, follow in zip(batch.column("path").to_pylist(), batch.column("rel").to_pylist(),
                                 batch.column("follow").to_pylist(), strict=True):
        docs.extend(read_file(Path(os.fsdecode(path)), rel, report, None, follow=follow,
                              max_file_bytes=job.config.sources.max_file_bytes, known=known_files))
    rows: dict[str, list[Any]] = {name: [None] for name in DOCS.names}
    rows["report"] = [pickle.dumps(report)]
    for d in docs:
        rows["doc_id"].append(d.doc_id)
        rows["source_path"].append(d.source_path)
        rows["doc_type"].append(d.doc_type)
        rows["content_hash"].append(d.content_hash)
        rows["metadata"].append(orjson.dumps(d.metadata).decode() if d.metadata else None)
        rows["text"].append(d.text)
        rows["headings"].append(orjson.dumps(d.headings).decode() if d.headings else None)
        rows["report"].append(None)
    return pa.table(rows, schema=DOCS)


_counters: dict[str, Any] = {}


def chunk_documents(batch: pa.Table, job: RayJob, previous: Any) -> pa.Table:
    """Documents -> the same rows with their chunks; one the previous snapshot (an object ref of
    {doc_id: content_hash}) already holds unchanged is not chunked."""
    hashes: dict[str, str] = _get(previous)
    counter = _counters.get(job.spec.name) or _counters.setdefault(job.spec.name, token_counter_for(job.spec))
    columns = {name: batch.column(name) for name in DOCS.names if name not in ("text", "headings")}
    changed: list[bool | None] = []
    chunks: list[list[dict[str, Any]] | None] = []
    for row in batch.select(["doc_id", "source_path", "doc_type", "content_hash", "metadata", "text",
                             "headings"]).to_pylist():
        if row["doc_id"] is None:  # the report row
            changed.append(None)
            chunks.append(None)
            continue
        is_changed = hashes.get(row["doc_id"]) != row["content_hash"]
        changed.append(is_changed)
        if not is_changed:
            chunks.append([])
            continue
        doc = Document(row["doc_id"], row["source_path"], row["text"], row["content_hash"], row["doc_type"],
                       orjson.loads(row["metadata"]) if row["metadata"] else {},
                       tuple(tuple(h) for h in orjson.loads(row["headings"])) if row["headings"] else ())
        chunks.append([{"chunk_id": c.chunk_id, "chunk_index": c.chunk_index, "char_start": c.char_start,
                        "char_end": c.char_end, "text": c.text, "token_count": c.token_count,
                        "content_hash": c.content_hash, "overlap_chars": c.overlap_chars, "context": c.context,
                        "metadata": None if c.metadata is doc.metadata else orjson.dumps(c.metadata).decode()}
                       for c in chunk_document(doc, job.settings, counter)])
    return pa.table({**columns, "changed": pa.array(changed, pa.bool_()),
                     "chunks": pa.array(chunks, pa.list_(CHUNK_TYPE))}, schema=CHUNKED)


class EmbedActor:
    """One embedding worker (an actor of Ray Data's pool): one provider, with its HTTP connections and token.

    Each batch: one read-only cache lookup, then embed_items for the missing texts under the key's limits
    (the shared limiter actor), and the vectors back in the rows. Ray restarts a killed worker (same actor
    id) and gives it the batch again; it first hands back the in-flight slots its predecessor held.
    """

    def __init__(self, job: RayJob) -> None:
        self.job = job
        self.node = ray.util.get_node_ip_address()
        self.config = job.config.with_env_secrets(os.environ)
        spec = job.spec
        self.cache = VectorCache(job.cache_dir, job.cache_key, spec.dimension, normalize=spec.normalize,
                                 read_only=True)
        # This incarnation of the worker: Ray restarts a killed worker under the same actor id.
        actor = ray.get_runtime_context().get_actor_id() or "driver"
        self.holder = f"{actor}/{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.limiter: Limiter
        self._remote: RemoteLimiter | None = None
        if job.limiter is not None:
            self._remote = RemoteLimiter(job.limiter, self.holder)
            self.limiter = self._remote
        else:  # a CPU-bound model: its limit is this process's, like the local engine's
            cfg = self.config.embedding
            limit = min(cfg.concurrency, spec.max_concurrency) if spec.max_concurrency else cfg.concurrency
            self.limiter = LocalLimiter(limit, cfg.requests_per_minute, cfg.tokens_per_minute)
        self.provider: EmbeddingProvider | None = None  # made on the first batch, on the loop that uses it
        self.counter = token_counter_for(spec)
        self.aborted = ""  # a run stopped by this worker's embedder (credentials refused...): fail the rest
        self.started = False

    async def _ready(self) -> EmbeddingProvider:
        """The provider; first the checks that fail the run (on a batch, not in the constructor, which Ray
        would retry) and the slots a killed predecessor held."""
        job = self.job
        if job.limiter is not None and key_id(self.config, job.spec, job.endpoint) != job.key_id:
            raise ConfigError(f"Ray worker on {self.node}: its credentials for {job.endpoint} (from the environment "
                              "`ray start` ran in) are not the driver's: one key, one rate limit; give every "
                              "node the same")
        if not self.started:
            self.started = True
            if self._remote is not None:  # (a first start has no predecessor: nothing to give back)
                freed = await self._remote.release_holder()
                if freed:
                    log.warning("worker %s restarted: gave back %d in-flight slots", self.holder, freed)
        if self.provider is None:
            try:
                self.provider = embedding_provider(self.job.spec, self.config)
            except ConfigError as e:
                raise ConfigError(f"Ray worker on {self.node}: {e}") from None
        return self.provider

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        wanted = list(dict.fromkeys(c["content_hash"] for r in rows for c in (r["chunks"] or ())))
        missing = set(self.cache.missing(wanted)) if wanted else set()
        texts: dict[str, EmbedItem] = {}
        for r in rows:
            for c in r["chunks"] or ():
                if c["content_hash"] in missing and c["content_hash"] not in texts:
                    # What the model embeds: the chunk's context (contextual chunks), then its text.
                    texts[c["content_hash"]] = EmbedItem(c["content_hash"], (c["context"] or "") + c["text"],
                                                         c["token_count"])
        vectors: dict[str, np.ndarray] = {}
        stats = EmbedStats()
        if texts and self.aborted:
            stats.failed = dict.fromkeys(texts, self.aborted)
        elif texts:
            async def on_batch(keys: list[str], matrix: np.ndarray) -> None:
                vectors.update(zip(keys, np.asarray(matrix, dtype="<f4"), strict=True))

            stats = await embed_items(await self._ready(), list(texts.values()), self.config.embedding,
                                      on_batch=on_batch, limiter=self.limiter,
                                      splitter=lambda text: split_for_retry(text, self.counter))
            self.aborted = stats.aborted
        return _embedded(batch, rows, missing, vectors, stats)


def _embedded(batch: pa.Table, rows: list[dict[str, Any]], missing: set[str], vectors: dict[str, np.ndarray],
              stats: EmbedStats) -> pa.Table:
    given: set[str] = set()
    out: dict[str, list[Any]] = {"missing": [], "vec_keys": [], "vectors": [], "failed": [], "stats": []}
    for i, r in enumerate(rows):
        mine = list(dict.fromkeys(c["content_hash"] for c in r["chunks"] or () if c["content_hash"] in missing))
        keys = [h for h in mine if h in vectors and h not in given]
        given.update(keys)
        out["missing"].append(mine)
        out["vec_keys"].append(keys)
        out["vectors"].append(b"".join(vectors[h].tobytes() for h in keys))
        out["failed"].append([h for h in mine if h in stats.failed])
        out["stats"].append(pickle.dumps(stats) if i == 0 else None)
    columns = {name: batch.column(name) for name in CHUNKED.names}
    return pa.table({**columns, **{name: pa.array(values, EMBEDDED.field(name).type) for name, values in out.items()}},
                    schema=EMBEDDED)
