"""Run: bring an output directory up to date with a corpus (embed, reindex), or say what that would send (plan).

Joins sources -> chunking -> embedding -> store -> index around one RunContext; never searches or answers.
The driver's part (lock, diff, snapshot stream, cache writes, index, publish) is one for every engine; the
local engine (this process's event loop) reads, chunks and embeds here; corpus images are described by the
[images] vision model, if one is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .chunking import ChunkSettings, chunk_document, split_for_retry
from .config import Config
from .embedding import EmbedItem, EmbedStats, embed_items
from .errors import ShrinkRefusedError
from .incremental import CorpusDiff, diff_stream
from .planning import EmbedPlan, make_plan
from .providers import EmbeddingProvider, warmed_provider
from .records import Chunk, Document
from .run_context import OwnedProvider, RunContext, chunk_counter, contextual_setting, locked, run_spec
from .snapshot_stream import SnapshotStream
from .sources import KnownFile, SourceReport, iter_documents
from .store import (
    Snapshot,
    VectorCache,
    live_snapshot,
    new_snapshot_dir,
    publish_snapshot,
    row_count,
    write_json_atomic,
)
from .tokens import preload_counter, token_counter_for

if TYPE_CHECKING:  # the index stage loads when a run builds one (faiss: 50 ms)
    from .index import IndexReport

__all__ = ["EXIT_NOTHING_EMBEDDED", "EXIT_PARTIAL", "EmbedReport", "Engine", "LocalEngine", "Progress", "RunState",
           "Tally", "chunk_corpus", "embed", "no_progress", "plan", "reindex"]

Progress = Callable[[str, int | None], Callable[[int], None]]  # (label, total) -> advance(n)
Describe = Callable[[Path, str], str]  # an image file and its doc id -> its description
EXIT_PARTIAL = 3  # some documents failed; the rest is published
EXIT_NOTHING_EMBEDDED = 1  # every batch failed (credentials, TLS, DNS, a dead server): a broken deployment


def no_progress(label: str, total: int | None) -> Callable[[int], None]:
    return lambda n: None


@contextlib.contextmanager
def _describer(config: Config) -> Iterator[Describe | None]:
    """The [images] vision_model's describer for the corpus images, closed afterwards; None: images are skipped."""
    from .images import image_describer

    describer = image_describer(config)
    try:
        yield describer
    finally:
        if describer is not None:
            describer.close()


@dataclass
class EmbedReport:
    """What an embed run did; printed as the summary line and saved as out/run-report.json."""

    corpus: str
    model: str
    out_dir: str
    files: int = 0
    unread: int = 0  # files whose size and mtime were unchanged: not read (see --verify)
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
    engine: str = "local"  # where documents were read, chunked and embedded: this process, or a Ray cluster
    workers: int = 1  # processes that embedded (the Ray engine's embedding actors)

    @property
    def exit_code(self) -> int:
        if self.failed_chunks and not self.embedded:
            return EXIT_NOTHING_EMBEDDED  # not "partial": it will fail the same way tomorrow
        return EXIT_PARTIAL if self.failed_chunks else 0

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        rate = self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0
        d = self.diff
        changes = (f" (+{d.get('added', 0)} ~{d.get('changed', 0)} -{d.get('deleted', 0)} "
                   f"={d.get('unchanged', 0)})") if d else ""
        where = f", engine {self.engine} ({self.workers} workers)" if self.engine != "local" else ""
        return (f"{self.documents} documents{changes}, {self.chunks} chunks, {skipped} skipped, "
                f"{self.vectors} vectors ({self.embedded} embedded, {self.cached} cached), "
                f"{self.failed_chunks} failed, {self.seconds:.1f} s, {rate:.1f} chunks/s{where}")


def _documents(config: Config, corpus: Path, report: SourceReport | None, describe: Describe | None = None,
               known: Mapping[str, KnownFile] | None = None) -> Iterator[Document]:
    """The corpus walked with the config's [sources] rules (links, size limit); `known` files unread."""
    return iter_documents(corpus, report, describe, follow_symlinks=config.sources.follow_symlinks,
                          max_file_bytes=config.sources.max_file_bytes, known=known)


def _known_files(documents: Mapping[str, Mapping[str, Any]]) -> dict[str, KnownFile]:
    """The previous manifest's documents by source file, for those it recorded a file stamp of."""
    known: dict[str, KnownFile] = {}
    for doc_id, entry in documents.items():
        if "mtime_ns" in entry and "size" in entry:
            was = known.setdefault(entry["source_path"], ((entry["size"], entry["mtime_ns"]), []))
            was[1].append((doc_id, entry["content_hash"]))
    return known


def _stamped(documents: dict[str, dict[str, Any]], sources: SourceReport,
             unstamped: set[str]) -> dict[str, dict[str, Any]]:
    """Manifest entries with the file stamp read this run; none for files with a failed document, so the
    next run reads them again (a failed new document is in no entry to come back from)."""
    out: dict[str, dict[str, Any]] = {}
    for doc_id, entry in documents.items():
        stamp = sources.stamps.get(entry["source_path"])
        if stamp is None or entry["source_path"] in unstamped:
            out[doc_id] = {k: v for k, v in entry.items() if k not in ("size", "mtime_ns")}
        else:
            out[doc_id] = {**entry, "size": stamp[0], "mtime_ns": stamp[1]}
    return out


def chunk_corpus(config: Config, corpus: Path, report: SourceReport | None = None, progress: Progress = no_progress
                 ) -> Iterator[Chunk]:
    """Chunks of every document of a corpus, for the configured model (contextual as embed would chunk into
    config.out_dir)."""
    spec = config.model_spec()
    settings = ChunkSettings.for_model(spec, config.chunking, contextual=contextual_setting(config, config.out_dir))
    counter = chunk_counter(config, spec)
    advance = progress("chunk", None)
    with _describer(config) as describe:
        for doc in _documents(config, corpus, report, describe):
            yield from chunk_document(doc, settings, counter)
            advance(1)


def _crash_point(name: str) -> None:
    """Die like kill -9 at a named point when the crash tests ask for it (PIPELINE_TEST_CRASH_AT)."""
    if os.environ.get("PIPELINE_TEST_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def embed(config: Config, *, build: bool = True, new_index: bool = False, progress: Progress = no_progress,
          provider: EmbeddingProvider | None = None, allow_shrink: bool = False, verify: bool = False,
          engine: Engine | None = None) -> EmbedReport:
    """Bring the output directory up to date with the corpus: incremental, locked, atomic.

    Unchanged documents keep their rows (vectors included) from the live snapshot; new and changed
    ones are chunked and embedded (the cache first); deleted ones drop out. A document whose
    embedding failed keeps its previous version, is listed, and is redone by the next run. The new
    snapshot is published only when complete, so searches never see a half-built index.
    `provider`: one already made for config's model (providers.warmed_provider); the run owns and closes
    it, refused or not. Default: made and warmed here.
    `engine`: where documents are read, chunked and embedded (default: LocalEngine, this process); whichever
    it is, this process holds the lock and writes the cache, the snapshot, the index and CURRENT.
    Raises ModelMismatchError when the live index has another model fingerprint (use new_index), and
    ShrinkRefusedError when the corpus has no documents, or lost more than [sources] max_deleted_share of
    the live ones, unless allow_shrink (the vectors embedded meanwhile stay in the cache).
    A file whose size and mtime are those the live snapshot recorded is not read again, unless `verify`.
    """
    started = time.perf_counter()
    owner = OwnedProvider(provider)
    engine = engine or LocalEngine()
    try:
        engine.check(config)
        spec = run_spec(config)
        preload_counter(spec)
        # Started first: the access token arrives while the tokenizer loads and the corpus is read.
        if owner.provider is None and engine.embeds_here:
            owner.provider = warmed_provider(spec, config)
        ctx = RunContext.open(config, spec, new_index=new_index)
        with ctx.locked():
            if ctx.foreign():
                raise ctx.mismatch()
            return _update(ctx, owner, engine, started, build, progress, allow_shrink, verify)
    finally:
        owner.close()


@dataclass
class Tally:
    chunks: int = 0
    cached: int = 0  # chunks whose vector the cache had (or an earlier chunk of the run asked for)
    tokens: int = 0  # of the texts sent to be embedded


@dataclass
class RunState:
    """A locked run's driver side, the same whichever engine reads, chunks and embeds: what the engine works
    from (context, previous manifest, known files) and what it fills (sources, diff, tally, stream, cache)."""

    ctx: RunContext
    owner: OwnedProvider
    cache: VectorCache
    stream: SnapshotStream
    progress: Progress
    previous: dict[str, Any]  # the live manifest's documents
    known: dict[str, KnownFile] | None  # files not to read again (None: --verify)
    chunked: Callable[[], None]  # reading and chunking are done (report.chunk_seconds)
    sources: SourceReport = field(default_factory=SourceReport)
    diff: CorpusDiff = field(default_factory=CorpusDiff)
    tally: Tally = field(default_factory=Tally)

    def admit(self, doc_id: str, entry: dict[str, Any], chunks: list[Chunk], missing: Iterable[str]) -> list[Chunk]:
        """A chunked document into the stream, given the hashes the cache lacks; the chunks to embed (each
        hash once in the run: a chunk whose vector is cached or already asked for is counted as cached)."""
        new = set(self.stream.add(doc_id, entry, chunks, missing))
        self.tally.chunks += len(chunks)
        out: list[Chunk] = []
        for c in chunks:
            if c.content_hash in new:
                new.discard(c.content_hash)
                self.tally.tokens += c.token_count
                out.append(c)
            else:
                self.tally.cached += 1
        return out

    def landed(self, keys: list[str], matrix: np.ndarray) -> None:
        """Vectors embedded: into the cache (the run's only writer of it), then to the documents waiting."""
        self.cache.put(keys, matrix)
        self.stream.landed(keys, matrix)


class Engine(Protocol):
    """Where a run's documents are read, chunked and embedded; the driver (embed) does the rest."""

    name: str
    workers: int  # processes that embed(ed)
    embeds_here: bool  # uses the run's own provider (so embed warms it up first)

    def check(self, config: Config) -> None:
        """Refuse, with a ConfigError, settings this engine cannot run (before any work or lock)."""

    def run(self, state: RunState) -> EmbedStats:
        """Read the corpus (state.known unread) into state.sources and state.diff; admit() each added or
        changed document and tell the stream what landed and what failed. Every document read is settled
        when this returns."""


class LocalEngine:
    """This process: documents stream from the corpus through the chunker to the embedder's event loop."""

    name = "local"
    workers = 1
    embeds_here = True

    def check(self, config: Config) -> None:
        return None

    def run(self, state: RunState) -> EmbedStats:
        config = state.ctx.config
        with _describer(config) as describe:
            # Reading, diffing and chunking feed the embedder as they go (it drains them in a thread), so
            # the first requests leave with the first file instead of after the whole corpus is read.
            docs = _documents(config, config.corpus, state.sources, describe, state.known)
            missing = _missing_items(diff_stream(docs, state.previous, state.diff), state)
            first = next(missing, None)
            if first is None:
                return EmbedStats()
            return asyncio.run(_embed_missing(state, itertools.chain([first], missing)))


def _update(ctx: RunContext, owner: OwnedProvider, engine: Engine, started: float, build: bool, progress: Progress,
            allow_shrink: bool, verify: bool) -> EmbedReport:
    """The locked part of embed: diff, chunk and embed what is missing (the engine), write, index and publish.

    Streams end to end: documents are read, chunked, embedded and written as they come, the previous
    snapshot's kept rows are copied batch by batch, so memory follows the settings, not the corpus.
    """
    config, out_dir = ctx.config, ctx.out_dir
    report = EmbedReport(corpus=str(config.corpus), model=ctx.spec.name, out_dir=config.out_label,
                         engine=engine.name)
    cache = ctx.cache()

    def chunked() -> None:
        report.chunk_seconds = time.perf_counter() - started

    meta = ctx.snapshot_meta()
    snap = new_snapshot_dir(out_dir)  # unpublished until the end; a crash leaves it to the next run
    stream = SnapshotStream(snap, cache, meta)
    prev_docs: dict[str, Any] = ctx.manifest["documents"] if ctx.manifest else {}
    state = RunState(ctx, owner, cache, stream, progress, prev_docs, None if verify else _known_files(prev_docs),
                     chunked)
    sources, diff, tally = state.sources, state.diff, state.tally
    with _aborted_on_error(stream):
        stats = engine.run(state)
        if not allow_shrink:
            _check_shrink(ctx, sources, diff)
        _crash_point("after_embed")
        stream.settle_all()
        failed = set(stream.failed_docs)
        keep = set(diff.unchanged) | {d for d in failed if d in prev_docs}  # a failed one keeps its old rows
        rows = stream.finish(ctx.previous.vectors_path if ctx.previous is not None else None, keep)
    report.workers = engine.workers
    report.files, report.unread, report.documents = sources.files, sources.unread, sources.documents
    report.skipped, report.warnings = dict(sources.skipped), sources.warnings
    report.diff = diff.counts()
    report.cached, report.tokens = tally.cached, tally.tokens
    report.embedded = stats.texts
    report.requests, report.retries, report.split_texts = stats.requests, stats.retries, stats.split_texts
    report.errors = dict(stats.errors)
    report.limits = {"texts_per_request": stats.batch_texts, "in_flight": stats.concurrency,
                     "requests_per_s": round(stats.requests_per_s, 2)} if stats.requests else {}
    report.embed_seconds = stats.seconds
    report.failed_documents = sorted(failed)
    report.failed_chunks = stream.failed_chunks
    report.failure_reasons = sorted(set(stats.failed.values()))[:10]

    # The old version of a failed document keeps serving; its old hash makes the next run retry it.
    documents = {doc_id: prev_docs[doc_id] for doc_id in keep}
    documents.update(stream.written)
    documents = _stamped(documents, sources, {e["source_path"] for e in stream.failed_docs.values()})
    write_json_atomic({**meta, "corpus": str(config.corpus), "documents": documents,
                       "failed_documents": sorted(failed), "skipped": dict(sources.skipped)}, snap.manifest_path)
    report.chunks = report.vectors = rows
    if build and rows:
        index_started = time.perf_counter()
        report.index = asdict(_update_index(config, ctx.previous, snap, progress))
        report.index_seconds = time.perf_counter() - index_started
    _crash_point("before_publish")
    publish_snapshot(out_dir, snap, previous=ctx.previous)
    _crash_point("after_publish")
    report.snapshot = str(snap.path)
    report.seconds = time.perf_counter() - started
    write_json_atomic(asdict(report), out_dir / "run-report.json")
    with (out_dir / "runs.jsonl").open("a", encoding="utf-8") as history:  # one line a run, for dashboards
        history.write(json.dumps({k: v for k, v in asdict(report).items() if k not in ("warnings", "index")},
                                 ensure_ascii=False) + "\n")
    return report


def _check_shrink(ctx: RunContext, sources: SourceReport, diff: CorpusDiff) -> None:
    """Refuse a corpus with no documents, or one that lost too many of the live ones (see embed)."""
    live = len(ctx.manifest["documents"]) if ctx.manifest else 0
    deleted = diff.counts().get("deleted", 0)
    corpus, share = ctx.config.corpus, ctx.config.sources.max_deleted_share
    skipped = f" ({sources.skipped_total} files skipped)" if sources.skipped_total else ""
    if not sources.documents:
        what = f"would replace the live index of {live} documents" if live else "nothing to index"
        raise ShrinkRefusedError(f"{corpus}: no documents{skipped}; {what} (is it mounted?). "
                                 "--allow-shrink to publish it anyway")
    if live and deleted / live > share:
        raise ShrinkRefusedError(f"{corpus}: {deleted} of the {live} live documents are gone{skipped}, more than "
                                 f"[sources] max_deleted_share {share:.0%} (is it all mounted?). "
                                 "--allow-shrink to publish it anyway")


def plan(config: Config, *, latency_ms: float | None = None) -> EmbedPlan:
    """What `embed` would send, and how long it should take, without calling the provider.

    Reads the corpus, the live snapshot and the vector cache; takes no lock and writes nothing.
    latency_ms is the expected time of one request (None: a documented guess, noted in the plan).
    """
    ctx = RunContext.open(config, run_spec(config))  # the fingerprint embed would record
    counter = token_counter_for(ctx.spec)  # offline: planning sends nothing, not even token counts
    result = EmbedPlan(corpus=str(config.corpus), model=ctx.spec.name)
    if config.chunking.exact_tokens:
        result.notes.append("exact_tokens: planned with the offline token counter (the exact one asks the "
                            "service), so chunk and cache-hit counts may differ a little")
    ctx.read_previous()
    manifest = ctx.manifest
    if ctx.foreign():
        result.notes.append(f"{config.out_dir} holds an index of other settings: embed refuses it without "
                            "--new-index; planned as a fresh build")
        manifest = None
    sources = SourceReport()
    diff = CorpusDiff()
    tally = Tally()
    to_send: list[EmbedItem] = []  # texts dropped: a plan needs their token counts only
    seen: set[str] = set()
    cache = ctx.cache()
    for doc in diff_stream(_documents(config, config.corpus, sources), manifest["documents"] if manifest else None,
                           diff):
        for c in chunk_document(doc, ctx.settings, counter):
            tally.chunks += 1
            if c.content_hash in seen or c.content_hash in cache:
                tally.cached += c.content_hash not in seen
                continue
            seen.add(c.content_hash)
            to_send.append(EmbedItem(c.content_hash, "", c.token_count))
    if sources.skipped:
        result.notes.append(f"skipped files (not planned): {dict(sources.skipped)}")
    result.documents, result.documents_to_chunk = sources.documents, len(diff.to_chunk)
    result.chunks, result.cache_hits = tally.chunks, tally.cached
    return make_plan(result, to_send, ctx.spec, config.embedding, latency_ms)


def reindex(config: Config, progress: Progress = no_progress, *, engine: str = "local",
            ray_address: str | None = None) -> IndexReport:
    """(Re)build the index of the live snapshot into a new snapshot (vectors hard-linked), then publish.

    engine "ray": the vectors of an inverted-list index are added across the Ray cluster at `ray_address`.
    """
    with locked(config):
        live = live_snapshot(config.out_dir)
        snap = new_snapshot_dir(config.out_dir)
        for src in (live.vectors_path, live.manifest_path):
            try:
                os.link(src, snap.path / src.name)
            except OSError:  # another filesystem, or no hard links there
                shutil.copy2(src, snap.path / src.name)
        report = _build(config, snap, progress, engine=engine, ray_address=ray_address)
        publish_snapshot(config.out_dir, snap, previous=live)
    return report


def _build(config: Config, snap: Snapshot, progress: Progress, *, engine: str = "local",
           ray_address: str | None = None) -> IndexReport:
    """A full build of snap's index (`pipeline index`), in this process or sharded across a Ray cluster."""
    from .index import build_index

    options: dict[str, Any] = {
        "index_type": config.index.index_type, "memory_budget_bytes": config.index.memory_budget_bytes,
        "target_recall": config.index.target_recall, "bm25_max_rows": config.index.bm25_max_rows,
        "progress": progress("index", row_count(snap.vectors_path))}
    if engine == "ray":
        from .index.sharded import build_index_sharded

        return build_index_sharded(snap, ray_address=ray_address, **options)
    return build_index(snap, **options)


def _update_index(config: Config, previous: Snapshot | None, snap: Snapshot, progress: Progress) -> IndexReport:
    """snap's index from previous's, updated in place when the index type allows it; the report says which."""
    from .index import update_index

    return update_index(previous, snap, index_type=config.index.index_type,
                        memory_budget_bytes=config.index.memory_budget_bytes,
                        target_recall=config.index.target_recall, bm25_max_rows=config.index.bm25_max_rows,
                        progress=progress("index", None))


def _missing_items(docs: Iterable[Document], state: RunState) -> Iterator[EmbedItem]:
    """Chunk `docs` into the run's stream; yield each content hash neither cached nor already asked for."""
    ctx, advance = state.ctx, state.progress("chunk", None)
    for doc in docs:
        chunks = chunk_document(doc, ctx.settings, ctx.counter)
        missing = state.cache.missing(list({c.content_hash: None for c in chunks}))  # one lookup a document
        entry = {"content_hash": doc.content_hash, "source_path": doc.source_path}
        for c in state.admit(doc.doc_id, entry, chunks, missing):
            yield EmbedItem(c.content_hash, c.embed_text, c.token_count)
        advance(1)
    state.chunked()


async def _embed_missing(state: RunState, items: Iterable[EmbedItem]) -> EmbedStats:
    """Embed items into the cache, telling the stream what landed and what failed; the owned provider is
    closed at the end of this, its loop."""
    ctx, owner = state.ctx, state.owner
    try:
        provider = owner.get(ctx.spec, ctx.config)
        counter = token_counter_for(ctx.spec)
        advance = state.progress("embed", len(items) if isinstance(items, Sized) else None)

        async def on_batch(keys: list[str], matrix: np.ndarray) -> None:
            await asyncio.to_thread(state.landed, keys, matrix)

        return await embed_items(provider, items, ctx.config.embedding, on_batch=on_batch,
                                 on_failed=state.stream.failed, progress=advance,
                                 splitter=lambda text: split_for_retry(text, counter))
    finally:
        await owner.aclose()


@contextlib.contextmanager
def _aborted_on_error(stream: SnapshotStream) -> Iterator[None]:
    try:
        yield
    except BaseException:
        stream.abort()
        raise
