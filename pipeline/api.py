"""API: the verbs (embed, build_index, search, ask, chunk, list_models) that join the stages.

The only place outside the emulator that runs an event loop; the CLI is a thin shell over these.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock, Timeout

from .chunking import ChunkSettings, chunk_document, split_for_retry
from .config import Config
from .embedding import EmbedItem, EmbedStats, embed_items
from .errors import ConfigError, LockHeldError, ModelMismatchError, SourceError, StoreError
from .incremental import CorpusDiff, diff_corpus, diff_stream, merge_tables
from .planning import EmbedPlan, make_plan
from .providers import EmbeddingProvider, embedding_provider, provider_endpoint, warmed_provider
from .providers.base import TokenCountingProvider
from .records import Chunk, Document, Hit, ModelSpec
from .sources import SourceReport, iter_documents
from .store import (
    META_KEY,
    Snapshot,
    TableWriter,
    VectorCache,
    chunk_table,
    current_snapshot,
    fingerprint_id,
    new_snapshot_dir,
    normalize_rows,
    publish_snapshot,
    write_json_atomic,
    write_table_atomic,
)
from .tokens import CachedCounter, TokenCounter, preload_counter, token_counter_for

if TYPE_CHECKING:  # the search, ask, index and evaluation stages load with their verbs (faiss: 50 ms)
    from .answer.records import Answer
    from .evaluate import EvalReport
    from .filters import SearchFilter
    from .index import IndexReport

__all__ = [
    "EmbedPlan",
    "EmbedReport",
    "SearchResult",
    "ask",
    "build_index_for",
    "chunk_corpus",
    "embed",
    "evaluate",
    "list_models",
    "plan",
    "search",
]

Progress = Callable[[str, int | None], Callable[[int], None]]  # (label, total) -> advance(n)
EXIT_PARTIAL = 3
EXACT_OVERHEAD_TOKENS = 5  # GigaChat's embeddings count runs 5 above /tokens/count (api doc §5.6)


def _no_progress(label: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class EmbedReport:
    """What an embed run did; printed as the summary line and saved as out/run-report.json."""

    corpus: str
    model: str
    out_dir: str
    files: int = 0
    documents: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    chunks: int = 0
    tokens: int = 0
    vectors: int = 0
    cached: int = 0
    embedded: int = 0
    failed_chunks: int = 0
    failed_documents: list[str] = field(default_factory=list)
    failure_reasons: list[str] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    split_texts: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)  # what the embedder ended on: texts/request, in flight, req/s
    chunk_seconds: float = 0.0  # reading, hashing and chunking the corpus
    embed_seconds: float = 0.0
    index_seconds: float = 0.0
    seconds: float = 0.0
    snapshot: str = ""
    diff: dict[str, int] = field(default_factory=dict)  # added / changed / deleted / unchanged documents
    index: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_PARTIAL if self.failed_chunks else 0

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        rate = self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0
        d = self.diff
        changes = (f" (+{d.get('added', 0)} ~{d.get('changed', 0)} -{d.get('deleted', 0)} "
                   f"={d.get('unchanged', 0)})") if d else ""
        return (f"{self.documents} documents{changes}, {self.chunks} chunks, {skipped} skipped, "
                f"{self.vectors} vectors ({self.embedded} embedded, {self.cached} cached), "
                f"{self.failed_chunks} failed, {self.seconds:.1f} s, {rate:.1f} chunks/s")


@dataclass
class SearchResult:
    query: str
    model: str
    hits: list[Hit]
    seconds: float


def list_models(config: Config) -> list[ModelSpec]:
    return sorted(config.registry.values(), key=lambda s: (s.kind, s.provider, s.name))


def _fingerprint(spec: ModelSpec, config: Config, settings: ChunkSettings, counter_name: str) -> dict[str, Any]:
    return {
        "model": spec.name, "provider": spec.provider, "endpoint": provider_endpoint(spec, config),
        "dimension": spec.dimension, "normalize": spec.normalize,
        "query_instruction": spec.query_instruction, "passage_instruction": spec.passage_instruction,
        "chunking": {"max_tokens": settings.max_tokens, "target_tokens": settings.target_tokens,
                     "overlap_tokens": settings.overlap_tokens, "tokenizer": counter_name},
    }


def _cache_key(fp: dict[str, Any]) -> str:
    """Vectors depend on model, endpoint and passage instruction, not on chunking or normalisation."""
    return f"{fp['model']}-" + fingerprint_id({k: fp[k] for k in ("model", "provider", "endpoint", "dimension",
                                                                     "passage_instruction")})


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out_dir / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LockHeldError(f"{out_dir}: another pipeline run holds the lock ({out_dir / '.lock'})") from None
    try:
        yield
    finally:
        lock.release()


def chunk_counter(config: Config, spec: ModelSpec) -> TokenCounter:
    """The chunker's counter: the offline one, or with [chunking] exact_tokens the provider's own count.

    The exact counter asks the service (GigaChat's /tokens/count) once per distinct text, plus the
    embeddings endpoint's per-text overhead; only providers that can count support it.
    """
    if not config.chunking.exact_tokens:
        return token_counter_for(spec)
    provider = embedding_provider(spec, config)
    if not isinstance(provider, TokenCountingProvider):
        raise ConfigError(f"--exact-tokens: the {spec.provider} provider of {spec.name} cannot count tokens")

    def count_many(texts: list[str]) -> list[int]:
        return list(asyncio.run(provider.count_tokens(texts)))

    return CachedCounter(f"{spec.provider}-exact", count_many, overhead_tokens=EXACT_OVERHEAD_TOKENS)


def chunk_corpus(
    config: Config, corpus: Path, report: SourceReport | None = None, progress: Progress = _no_progress
) -> Iterator[Chunk]:
    """Chunks of every document of a corpus, for the configured model."""
    spec = config.model_spec()
    settings = ChunkSettings.for_model(spec, config.chunking)
    counter = chunk_counter(config, spec)
    advance = progress("chunk", None)
    with _image_describer(config) as describe:
        for doc in iter_documents(corpus, report, describe):
            yield from chunk_document(doc, settings, counter)
            advance(1)


@contextlib.contextmanager
def _image_describer(config: Config) -> Iterator[Callable[[Path, str], str] | None]:
    """The [images] vision_model's describer for the corpus images, closed afterwards; None: images are skipped."""
    from .images import image_describer

    describer = image_describer(config)
    try:
        yield describer
    finally:
        if describer is not None:
            describer.close()


def _sibling_out_dir(out_dir: Path, fp: dict[str, Any]) -> Path:
    return out_dir.with_name(f"{out_dir.name}.{fp['model']}-{fingerprint_id(fp)[:8]}")


def _crash_point(name: str) -> None:
    """Die like kill -9 at a named point when the crash tests ask for it (PIPELINE_TEST_CRASH_AT)."""
    if os.environ.get("PIPELINE_TEST_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def embed(config: Config, *, build: bool = True, new_index: bool = False,
          progress: Progress = _no_progress, provider: EmbeddingProvider | None = None) -> EmbedReport:
    """Bring the output directory up to date with the corpus: incremental, locked, atomic.

    Unchanged documents keep their rows (vectors included) from the live snapshot; new and changed
    ones are chunked and embedded (the cache first); deleted ones drop out. A document whose
    embedding failed keeps its previous version, is listed, and is redone by the next run. The new
    snapshot is published only when complete, so searches never see a half-built index.
    `provider`: one already made for config's model (providers.warmed_provider, started before this
    module's imports, as the CLI does); embed closes it. Default: made and warmed here.
    Raises ModelMismatchError when the live index has another model fingerprint (use new_index).
    """
    started = time.perf_counter()
    with _closed(provider) as keep:  # a caller's provider is closed if the run is refused here
        if config.corpus is None:
            raise ConfigError("no corpus: give CORPUS or set `corpus` in the config file")
        if not config.corpus.exists():
            raise SourceError(f"{config.corpus}: corpus path does not exist")
        spec = config.model_spec()
        keep()
    preload_counter(spec)
    # Started first: the access token arrives while the tokenizer loads and the corpus is read.
    if provider is None:
        provider = warmed_provider(spec, config)
    with _closed(provider) as hand_over:
        settings = ChunkSettings.for_model(spec, config.chunking)
        counter = chunk_counter(config, spec)
        fp = _fingerprint(spec, config, settings, counter.name)
        out_dir = config.out_dir
        if new_index:
            live = current_snapshot(out_dir) if out_dir.exists() else None
            if live is not None and live.manifest().get("fingerprint_id") != fingerprint_id(fp):
                out_dir = _sibling_out_dir(out_dir, fp)
        config = replace(config, out_dir=out_dir)
        report = EmbedReport(corpus=str(config.corpus), model=spec.name, out_dir=str(out_dir))

        with _locked(out_dir):
            previous = current_snapshot(out_dir)
            prev_manifest = previous.manifest() if previous else None
            if prev_manifest and prev_manifest.get("fingerprint_id") != fingerprint_id(fp):
                was = prev_manifest.get("fingerprint", {})
                raise ModelMismatchError(
                    f"{out_dir} holds an index of {was.get('model')!r} with other settings "
                    f"(fingerprint {prev_manifest.get('fingerprint_id')}); this run would be {spec.name!r} "
                    f"({fingerprint_id(fp)}). Use --new-index to build beside it, or --out another directory")

            sources = SourceReport()
            diff = CorpusDiff()
            cache = VectorCache(config.cache_dir, _cache_key(fp), spec.dimension, normalize=spec.normalize)
            new_chunks: list[Chunk] = []
            todo: dict[str, EmbedItem] = {}

            def chunked() -> None:
                report.chunk_seconds = time.perf_counter() - started

            meta = _snapshot_meta(spec, fp)
            snap = new_snapshot_dir(out_dir)  # unpublished until the end; a crash leaves it to the next prune
            # A fresh build writes its vectors while it embeds; an update merges old rows at the end instead.
            stream = _SnapshotStream(snap, new_chunks, cache, meta) if previous is None else None
            with _image_describer(config) as describe, _aborted_on_error(stream):
                # Reading, diffing and chunking feed the embedder as they go (it drains them in a thread), so
                # the first requests leave with the first file instead of after the whole corpus is read.
                to_chunk = diff_stream(iter_documents(config.corpus, sources, describe),
                                       prev_manifest["documents"] if prev_manifest else None, diff)
                missing = _missing_items(to_chunk, settings, counter, cache, new_chunks, todo,
                                         progress("chunk", None), chunked)
                first = next(missing, None)
                stats = EmbedStats()
                if first is not None:
                    hand_over()  # _embed_missing closes it
                    stats = asyncio.run(_embed_missing(config, spec, itertools.chain([first], missing), cache,
                                                       progress, stream.advance if stream else None, provider))
            report.files, report.documents = sources.files, sources.documents
            report.skipped, report.warnings = dict(sources.skipped), sources.warnings
            report.diff = diff.counts()
            report.cached = sum(1 for c in new_chunks if c.content_hash not in todo)
            report.embedded = stats.texts
            report.requests, report.retries, report.split_texts = stats.requests, stats.retries, stats.split_texts
            report.errors = dict(stats.errors)
            report.limits = {"texts_per_request": stats.batch_texts, "in_flight": stats.concurrency,
                             "requests_per_s": round(stats.requests_per_s, 2)} if stats.requests else {}
            report.embed_seconds = stats.seconds
            report.tokens = sum(c.token_count for c in new_chunks if c.content_hash in todo)

            failed_docs = sorted({c.doc_id for c in new_chunks if c.content_hash in stats.failed})
            report.failed_documents = failed_docs
            report.failed_chunks = sum(1 for c in new_chunks if c.content_hash in stats.failed)
            report.failure_reasons = sorted(set(stats.failed.values()))[:10]
            _crash_point("after_embed")

            _write_snapshot(config, snap, meta, diff, new_chunks, set(failed_docs), cache, previous, prev_manifest,
                            sources, stream)
            report.chunks = snap_rows = _row_count(snap)
            report.vectors = snap_rows
            if build and snap_rows:
                index_started = time.perf_counter()
                report.index = asdict(_build(config, snap, progress))
                report.index_seconds = time.perf_counter() - index_started
            _crash_point("before_publish")
            publish_snapshot(out_dir, snap, previous=previous)
            _crash_point("after_publish")
            report.snapshot = str(snap.path)
            report.seconds = time.perf_counter() - started
            write_json_atomic(asdict(report), out_dir / "run-report.json")
            with (out_dir / "runs.jsonl").open("a", encoding="utf-8") as history:  # one line a run, for dashboards
                history.write(json.dumps({k: v for k, v in asdict(report).items() if k not in ("warnings", "index")},
                                         ensure_ascii=False) + "\n")
        return report


def plan(config: Config, *, latency_ms: float | None = None) -> EmbedPlan:
    """What `embed` would send, and how long it should take, without calling the provider.

    Reads the corpus, the live snapshot and the vector cache; takes no lock and writes nothing.
    latency_ms is the expected time of one request (None: a documented guess, noted in the plan).
    """
    if config.corpus is None:
        raise ConfigError("no corpus: give CORPUS or set `corpus` in the config file")
    spec = config.model_spec()
    settings = ChunkSettings.for_model(spec, config.chunking)
    counter = token_counter_for(spec)  # offline: planning sends nothing, not even token counts
    fp = _fingerprint(spec, config, settings, chunk_counter(config, spec).name)  # what embed would record
    result = EmbedPlan(corpus=str(config.corpus), model=spec.name)
    if config.chunking.exact_tokens:
        result.notes.append("exact_tokens: planned with the offline token counter (the exact one asks the "
                            "service), so chunk and cache-hit counts may differ a little")
    live = current_snapshot(config.out_dir) if config.out_dir.exists() else None
    manifest = live.manifest() if live else None
    if manifest and manifest.get("fingerprint_id") != fingerprint_id(fp):
        result.notes.append(f"{config.out_dir} holds an index of other settings: embed refuses it without "
                            "--new-index; planned as a fresh build")
        manifest = None
    sources = SourceReport()
    diff = diff_corpus(iter_documents(config.corpus, sources), manifest["documents"] if manifest else None)
    if sources.skipped:
        result.notes.append(f"skipped files (not planned): {dict(sources.skipped)}")
    cache = VectorCache(config.cache_dir, _cache_key(fp), spec.dimension, normalize=spec.normalize)
    chunks: list[Chunk] = []
    todo: dict[str, EmbedItem] = {}
    for _ in _missing_items(diff.to_chunk, settings, counter, cache, chunks, todo, lambda n: None, lambda: None):
        pass
    result.documents, result.documents_to_chunk = sources.documents, len(diff.to_chunk)
    result.chunks = len(chunks)
    result.cache_hits = sum(1 for c in chunks if c.content_hash not in todo)
    return make_plan(result, list(todo.values()), spec, config.embedding, latency_ms)


def _row_count(snap: Snapshot) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(snap.vectors_path).metadata.num_rows)


def _missing_items(docs: Iterable[Document], settings: ChunkSettings, counter: TokenCounter, cache: VectorCache,
                   chunks: list[Chunk], todo: dict[str, EmbedItem], advance: Callable[[int], None],
                   done: Callable[[], None]) -> Iterator[EmbedItem]:
    """Chunk `docs` into `chunks`; yield (and note in `todo`) each content hash neither cached nor yielded."""
    for doc in docs:
        for c in chunk_document(doc, settings, counter):
            chunks.append(c)
            if c.content_hash not in cache and c.content_hash not in todo:
                todo[c.content_hash] = item = EmbedItem(c.content_hash, c.text, c.token_count)
                yield item
        advance(1)
    done()


async def _embed_missing(config: Config, spec: ModelSpec, items: Iterable[EmbedItem], cache: VectorCache,
                         progress: Progress, after_put: Callable[[], None] | None = None,
                         provider: EmbeddingProvider | None = None) -> EmbedStats:
    provider = provider or embedding_provider(spec, config)
    counter = token_counter_for(spec)
    advance = progress("embed", len(items) if isinstance(items, Sized) else None)

    def store(keys: list[str], matrix: np.ndarray) -> None:
        cache.put(keys, matrix)
        if after_put is not None:
            after_put()

    async def on_batch(keys: list[str], matrix: np.ndarray) -> None:
        await asyncio.to_thread(store, keys, matrix)

    try:
        return await embed_items(provider, items, config.embedding, on_batch=on_batch, progress=advance,
                                 splitter=lambda text: split_for_retry(text, counter))
    finally:
        await provider.aclose()


class _SnapshotStream:
    """Writes a fresh build's vectors.parquet while it embeds, so the run does not end on a long write.

    Chunks (corpus order, appended by the chunker thread) go out as row groups once every vector of a
    long enough run of them is in the cache. finish() completes the file, or drops it if any chunk is
    missing (a failed document must not be written): the end of the run then writes the table whole.
    """

    ROW_GROUP_BYTES = 8 << 20  # of vectors: the rows still unwritten when the last batch lands, at most

    def __init__(self, snap: Snapshot, chunks: list[Chunk], cache: VectorCache, meta: dict[str, Any]) -> None:
        self.chunks, self.cache, self.meta = chunks, cache, meta
        self.rows_per_group = max(1, self.ROW_GROUP_BYTES // (4 * cache.dimension))
        self.writer = TableWriter(snap.vectors_path, _empty_table(cache.dimension, meta).schema)
        self.written = 0  # chunks in the file
        self.ready = 0  # chunks[:ready] all have their vectors
        self._lock = threading.Lock()

    def advance(self, final: bool = False) -> None:
        """Write the ready run of chunks if it fills a row group (any length when final); any thread."""
        if not self._lock.acquire(blocking=final):
            return  # another thread is writing: it, or the next batch, takes these rows too
        try:
            while self.ready < len(self.chunks) and self.chunks[self.ready].content_hash in self.cache:
                self.ready += 1
            if self.ready - self.written >= (1 if final else self.rows_per_group):
                rows = self.chunks[self.written:self.ready]
                self.writer.write(chunk_table(rows, self.cache.get_many([c.content_hash for c in rows]), self.meta))
                self.written = self.ready
        finally:
            self._lock.release()

    def finish(self, complete: bool) -> bool:
        """Commit when `complete` (no chunk failed) and every chunk is written; else drop the file."""
        if complete:
            self.advance(final=True)
            if self.written == len(self.chunks):
                self.writer.commit()
                return True
        self.writer.abort()
        return False


@contextlib.contextmanager
def _closed(provider: EmbeddingProvider | None) -> Iterator[Callable[[], None]]:
    """Close `provider` on the way out unless the yielded function was called to hand it over."""
    owned = [provider]
    try:
        yield owned.clear
    finally:
        if owned and provider is not None:
            asyncio.run(provider.aclose())


@contextlib.contextmanager
def _aborted_on_error(stream: _SnapshotStream | None) -> Iterator[None]:
    try:
        yield
    except BaseException:
        if stream is not None:
            stream.writer.abort()
        raise


def _snapshot_meta(spec: ModelSpec, fp: dict[str, Any]) -> dict[str, Any]:
    return {"model": spec.name, "dimension": spec.dimension, "normalize": spec.normalize,
            "fingerprint": fp, "fingerprint_id": fingerprint_id(fp), "created_at": _now_iso()}


def _empty_table(dimension: int, meta: dict[str, Any]) -> Any:
    return chunk_table([], np.zeros((0, dimension), np.float32), meta)


def _write_snapshot(config: Config, snap: Snapshot, meta: dict[str, Any], diff: CorpusDiff,
                    new_chunks: list[Chunk], failed_docs: set[str], cache: VectorCache, previous: Snapshot | None,
                    prev_manifest: dict[str, Any] | None, sources: SourceReport,
                    stream: _SnapshotStream | None) -> None:
    """New snapshot = unchanged rows of the previous one + rows of new chunks (+ old rows of failed docs)."""
    import pyarrow.parquet as pq

    prev_docs: dict[str, Any] = prev_manifest["documents"] if prev_manifest else {}
    done = [c for c in new_chunks if c.doc_id not in failed_docs]
    if stream is None or not stream.finish(complete=not failed_docs):
        matrix = cache.get_many([c.content_hash for c in done])  # unit rows when spec.normalize: see the cache
        keep_old = diff.unchanged + [d for d in failed_docs if d in prev_docs]
        old_table = pq.read_table(previous.vectors_path) if previous is not None and keep_old else None
        new_table = chunk_table(done, matrix, meta) if done else None
        if old_table is None and new_table is None:
            table = _empty_table(cache.dimension, meta)
        else:
            table = merge_tables(old_table, keep_old, new_table, diff.order)
        table = table.replace_schema_metadata({META_KEY: json.dumps(meta, ensure_ascii=False).encode()})
        write_table_atomic(table, snap.vectors_path)

    documents: dict[str, dict[str, Any]] = {}
    for doc_id in diff.unchanged:
        documents[doc_id] = prev_docs[doc_id]
    for doc_id in failed_docs:
        if doc_id in prev_docs:  # the old version keeps serving; its old hash makes the next run retry
            documents[doc_id] = prev_docs[doc_id]
    chunk_counts: dict[str, int] = {}
    for c in done:
        chunk_counts[c.doc_id] = chunk_counts.get(c.doc_id, 0) + 1
    for doc in diff.to_chunk:
        if doc.doc_id not in failed_docs:
            documents[doc.doc_id] = {"content_hash": doc.content_hash, "source_path": doc.source_path,
                                     "chunks": chunk_counts.get(doc.doc_id, 0)}
    write_json_atomic({**meta, "corpus": str(config.corpus), "documents": documents,
                       "failed_documents": sorted(failed_docs), "skipped": dict(sources.skipped)},
                      snap.manifest_path)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _build(config: Config, snap: Snapshot, progress: Progress) -> IndexReport:
    import pyarrow.parquet as pq

    from .index import build_index

    total = pq.ParquetFile(snap.vectors_path).metadata.num_rows
    return build_index(snap, index_type=config.index.index_type,
                       memory_budget_bytes=config.index.memory_budget_bytes,
                       target_recall=config.index.target_recall, progress=progress("index", total))


def build_index_for(config: Config, progress: Progress = _no_progress) -> IndexReport:
    """(Re)build the index of the live snapshot into a new snapshot (vectors hard-linked), then publish."""
    with _locked(config.out_dir):
        live = _live(config.out_dir)
        snap = new_snapshot_dir(config.out_dir)
        for src in (live.vectors_path, live.manifest_path):
            try:
                os.link(src, snap.path / src.name)
            except OSError:  # another filesystem, or no hard links there
                shutil.copy2(src, snap.path / src.name)
        report = _build(config, snap, progress)
        publish_snapshot(config.out_dir, snap, previous=live)
    return report


def _live(out_dir: Path) -> Snapshot:
    snap = current_snapshot(out_dir)
    if snap is None:
        raise StoreError(f"{out_dir}: nothing embedded yet; run `pipeline embed` first")
    return snap


class _Searcher:
    """An index with the provider of its model, to embed queries the same way its passages were."""

    def __init__(self, config: Config, model: str | None) -> None:
        self.snap = _live(config.out_dir)
        from .index import load_index

        self.index, self.rows, self.meta = load_index(self.snap)
        indexed = self.meta.get("fingerprint", {})
        name = indexed.get("model", "")
        if model and model != name:
            raise ModelMismatchError(f"{config.out_dir} was built with model {name!r}; a query embedded with "
                                     f"{model!r} would not be comparable. Search it without --model, or "
                                     f"embed again with --model {model} --out another directory")
        self.spec = config.model_spec(name)
        if self.spec.dimension != indexed.get("dimension") or self.index.d != self.spec.dimension:
            raise ModelMismatchError(f"{config.out_dir}: index dimension {self.index.d} does not match model "
                                     f"{name} ({self.spec.dimension})")
        self.config = config

    def embed(self, texts: list[str], *, is_query: bool) -> np.ndarray:
        async def run() -> np.ndarray:
            provider = embedding_provider(self.spec, self.config)
            try:
                return await provider.embed_batch(texts, is_query=is_query)
            finally:
                await provider.aclose()

        matrix = np.array(asyncio.run(run()), dtype=np.float32)
        return normalize_rows(matrix) if self.spec.normalize else matrix

    def hits(self, query: str, vector: np.ndarray, k: int, filters: SearchFilter | None = None,
             hybrid: bool = False) -> list[Hit]:
        """Top-k hits within the filters: dense, or dense + BM25 fused by reciprocal rank (hybrid)."""
        from .hybrid import load_bm25
        from .search import hybrid_search, search_vectors

        allowed = filters.mask(self.rows) if filters else None
        if hybrid:
            return hybrid_search(self.index, self.rows, load_bm25(self.snap.index_dir), vector, query, k,
                                 allowed=allowed)
        return search_vectors(self.index, self.rows, vector, k, allowed=allowed)


def search(config: Config, query: str, *, k: int = 5, model: str | None = None,
           filters: SearchFilter | None = None, hybrid: bool = False) -> SearchResult:
    """Top-k chunks for a query, within `filters`; `hybrid` fuses BM25 with the dense hits.

    Raises ModelMismatchError if `model` differs from the index's.
    """
    if not query.strip():
        raise ConfigError("QUERY: empty query")
    started = time.perf_counter()
    searcher = _Searcher(config, model)
    vector = searcher.embed([query], is_query=True)[0]
    hits = searcher.hits(query, vector, k, filters, hybrid)
    return SearchResult(query, searcher.spec.name, hits, time.perf_counter() - started)


def evaluate(config: Config, dataset: Path, *, work_dir: Path | None = None, k: int = 10,
             progress: Progress = _no_progress) -> EvalReport:
    """Retrieval quality on a BEIR dataset (EvalReport): exact, the chosen index, BM25 and hybrid.

    The corpus goes through the normal pipeline into work_dir (default OUT/eval/<dataset>/<model>).
    """
    from .evaluate import evaluate as run_evaluation

    work = work_dir or config.out_dir / "eval" / dataset.stem / config.model
    return run_evaluation(config, dataset, work, k=k, progress=progress)


def ask(config: Config, question: str, *, k: int = 5, model: str | None = None, chat_model: str | None = None,
        structured: bool = False, on_delta: Callable[[str], None] | None = None,
        on_search: Callable[[str], None] | None = None, filters: SearchFilter | None = None,
        hybrid: bool = False) -> Answer:
    """An answer with checked [n] citations from the top-k chunks (within `filters`; `hybrid`: with BM25).

    With a chat model (chat_model, else [ask] chat_model; see answer.resolve_chat_model) the answer is
    streamed to on_delta as it arrives, the model may search the index again (on_search), and
    `structured` asks for the JSON schema instead; without one it is extractive (offline).
    Raises ConfigError (unknown chat model, no credentials), ContentRefusedError, BadRequestError,
    NetworkError (a stream broken midway).
    """
    if not question.strip():
        raise ConfigError("QUESTION: empty question")
    from .answer import chat_answer, extractive_answer, resolve_chat_model
    from .providers import chat_model as open_chat_model

    chat_spec = resolve_chat_model(config, chat_model)  # before any work: a bad name fails fast
    searcher = _Searcher(config, model)
    vector = searcher.embed([question], is_query=True)[0]
    hits = searcher.hits(question, vector, k, filters, hybrid)
    if chat_spec is None:
        return extractive_answer(question, vector, hits, lambda texts: searcher.embed(texts, is_query=False))

    def search_again(query: str) -> list[Hit]:
        return searcher.hits(query, searcher.embed([query], is_query=True)[0], k, filters, hybrid)

    backend = open_chat_model(chat_spec, config)
    try:
        return chat_answer(question, hits, backend=backend, spec=chat_spec, settings=config.ask,
                           search=search_again, structured=structured, on_delta=on_delta, on_search=on_search)
    finally:
        backend.close()
