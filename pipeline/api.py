"""API: the public verbs (embed, plan, build_index_for, search, ask, evaluate, list_models, chunk_corpus, cache_*).

Each verb is a thin call into its stage (run.py, search.py, the answer layer, evaluate.py); the CLI is a
thin shell over these. Stages that load FAISS are imported inside their verbs, so `embed` starts fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import run
from .config import Config
from .errors import ConfigError
from .planning import EmbedPlan
from .providers import EmbeddingProvider
from .records import Chunk, Hit, ModelSpec
from .remote import reading
from .run import EXIT_NOTHING_EMBEDDED, EXIT_PARTIAL, EmbedReport, Progress, no_progress
from .sources import SourceReport

if TYPE_CHECKING:  # the search, ask, index and evaluation stages load with their verbs (faiss: 50 ms)
    from .answer.records import Answer
    from .cache import CacheKeyStats, PruneReport
    from .evaluate import EvalReport
    from .filters import SearchFilter
    from .index import IndexReport

__all__ = [
    "EXIT_NOTHING_EMBEDDED",
    "EXIT_PARTIAL",
    "EmbedPlan",
    "EmbedReport",
    "Progress",
    "SearchResult",
    "ask",
    "build_index_for",
    "cache_stats",
    "chunk_corpus",
    "embed",
    "evaluate",
    "list_models",
    "plan",
    "prune_cache",
    "search",
]


@dataclass
class SearchResult:
    query: str
    model: str
    hits: list[Hit]
    seconds: float


def embed(config: Config, *, build: bool = True, new_index: bool = False, progress: Progress = no_progress,
          provider: EmbeddingProvider | None = None, allow_shrink: bool = False, verify: bool = False) -> EmbedReport:
    """Bring the output directory up to date with the corpus (see run.embed): incremental, locked, atomic.

    `provider`: one already made for config's model (providers.warmed_provider); embed closes it.
    Raises ModelMismatchError when the live index has another model fingerprint (use new_index), and
    ShrinkRefusedError when the corpus is empty or lost over [sources] max_deleted_share of the live
    documents, unless allow_shrink. `verify`: read every file, even those whose size and mtime are unchanged.
    [engine] name "ray" reads, chunks and embeds on a Ray cluster (engine_ray; the pipeline[ray] extra), into
    the same snapshot, manifest and index as the local engine; ConfigError when Ray is missing or unreachable.
    """
    engine = None
    if config.engine.name == "ray":
        from .engine_ray import RayEngine  # Ray itself is imported when the engine runs

        engine = RayEngine(config.engine)
    return run.embed(config, build=build, new_index=new_index, progress=progress, provider=provider,
                     allow_shrink=allow_shrink, verify=verify, engine=engine)


def plan(config: Config, *, latency_ms: float | None = None) -> EmbedPlan:
    """What `embed` would send, and how long it should take, without calling the provider."""
    return run.plan(reading(config, must_exist=False), latency_ms=latency_ms)


def chunk_corpus(config: Config, corpus: Path, report: SourceReport | None = None,
                 progress: Progress = no_progress) -> Iterator[Chunk]:
    """Chunks of every document of a corpus, for the configured model."""
    return run.chunk_corpus(config, corpus, report, progress)


def build_index_for(config: Config, progress: Progress = no_progress, *, engine: str = "local",
                    ray_address: str | None = None) -> IndexReport:
    """(Re)build the index of the live snapshot into a new snapshot (vectors hard-linked), then publish.

    engine "ray": an inverted-list index is built in shards by Ray tasks on the cluster at `ray_address` (else
    RAY_ADDRESS), then merged (index.sharded); other choices are built here either way.
    """
    return run.reindex(config, progress, engine=engine, ray_address=ray_address)


def list_models(config: Config) -> list[ModelSpec]:
    return sorted(config.registry.values(), key=lambda s: (s.kind, s.provider, s.name))


def search(config: Config, query: str, *, k: int = 5, model: str | None = None,
           filters: SearchFilter | None = None, hybrid: bool = False) -> SearchResult:
    """Top-k chunks for a query, within `filters`; `hybrid` fuses BM25 with the dense hits.

    Raises ModelMismatchError if `model` differs from the index's.
    """
    if not query.strip():
        raise ConfigError("QUERY: empty query")
    from .search import Searcher

    started = time.perf_counter()
    searcher = Searcher(reading(config), model)
    vector = searcher.embed([query], is_query=True)[0]
    hits = searcher.hits(query, vector, k, filters, hybrid)
    return SearchResult(query, searcher.spec.name, hits, time.perf_counter() - started)


def evaluate(config: Config, dataset: Path, *, work_dir: Path | None = None, k: int = 10,
             progress: Progress = no_progress) -> EvalReport:
    """Retrieval quality on a BEIR dataset (EvalReport): exact, the chosen index, BM25 and hybrid.

    The corpus goes through the normal pipeline into work_dir (default OUT/eval/<dataset>/<model>; for a
    remote OUT, under its local mirror: an evaluation's index is scratch, never pushed).
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
    from .search import Searcher

    chat_spec = resolve_chat_model(config, chat_model)  # before any work: a bad name fails fast
    searcher = Searcher(reading(config), model)
    vector = searcher.embed([question], is_query=True)[0]
    hits = searcher.hits(question, vector, k, filters, hybrid)
    if chat_spec is None:
        return extractive_answer(question, vector, hits, lambda texts: searcher.embed(texts, is_query=False),
                                 max_chars=config.ask.answer_max_chars)

    def search_again(query: str) -> list[Hit]:
        return searcher.hits(query, searcher.embed([query], is_query=True)[0], k, filters, hybrid)

    backend = open_chat_model(chat_spec, config)
    try:
        return chat_answer(question, hits, backend=backend, spec=chat_spec, settings=config.ask,
                           search=search_again, structured=structured, on_delta=on_delta, on_search=on_search)
    finally:
        backend.close()


def cache_stats(config: Config) -> list[CacheKeyStats]:
    """Entries and bytes of the vector cache (config.cache_dir), per model key; read-only."""
    from .cache import cache_stats as stats

    return stats(config.cache_dir)


def prune_cache(config: Config, out_dirs: Iterable[Path | str] | None = None, *,
                dry_run: bool = False) -> PruneReport:
    """Delete cached vectors that no live snapshot of `out_dirs` (default: config.out_dir) uses, then VACUUM.

    An output may be a URI (s3://bucket/prefix): its live snapshot is pulled (when it moved) and read.

    Only the model keys of those snapshots are pruned; other keys are left alone (PruneReport.untouched_keys).
    Raises StoreError when an output directory has no live snapshot.
    """
    from .cache import prune_cache as prune
    from .store import live_content_hashes

    live: dict[str, tuple[int, set[str]]] = {}
    for out in [reading(config.with_out(o)) for o in out_dirs] if out_dirs else [reading(config)]:
        key, dimension, hashes = live_content_hashes(out.out_dir)
        live.setdefault(key, (dimension, set()))[1].update(hashes)
    return prune(config.cache_dir, live, dry_run=dry_run)
