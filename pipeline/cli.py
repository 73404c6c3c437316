"""CLI: the `pipeline` command; each subcommand parses options, calls one api verb, renders the result.

One place (`main`) turns a PipelineError into a single line on stderr and its exit code.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .config import Config, load_config, parse_size
from .deadline import deadline_option
from .errors import PipelineError
from .tokens import preload_counter

__all__ = ["cli", "main"]

if TYPE_CHECKING:
    from .api import Progress

# The verbs (`from . import api`) are imported inside each command: a command starts its own early work
# (embed: the tokenizer) before numpy, pyarrow and the stages load, and --help stays quick.


def _progress_bars(enabled: bool) -> Progress:
    def factory(label: str, total: int | None) -> Callable[[int], None]:
        if not enabled:
            return lambda n: None
        from tqdm import tqdm

        unit = {"chunk": "doc", "embed": "chunk", "index": "vec"}.get(label, "it")
        bar = tqdm(total=total, desc=label, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
        return bar.update

    return factory


def _config(config_path: Path | None, *, exact_tokens: bool = False, follow_symlinks: bool | None = None,
            **overrides: Any) -> Config:
    from dataclasses import replace

    config = load_config(config_path, model=overrides.get("model"), corpus=overrides.get("corpus"),
                         out_dir=overrides.get("out_dir"))
    if exact_tokens:
        config = config.with_overrides(chunking=replace(config.chunking, exact_tokens=True))
    if follow_symlinks is not None:
        config = config.with_overrides(sources=replace(config.sources, follow_symlinks=follow_symlinks))
    return config


def _with_index_options(config: Config, index_type: str | None, memory_budget: str | None) -> Config:
    from dataclasses import replace

    changes: dict[str, Any] = {}
    if index_type:
        changes["index_type"] = index_type
    if memory_budget:
        changes["memory_budget_bytes"] = parse_size(memory_budget, what="--memory-budget")
    return config.with_overrides(index=replace(config.index, **changes))


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))


config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                             envvar="PIPELINE_CONFIG", help="Run config (TOML). Env: PIPELINE_CONFIG.")
out_option = click.option("--out", "out_dir", metavar="DIR|URI",
                          help="Output directory (snapshots, index), or object storage: "
                               "s3://bucket/prefix (a local mirror under the cache dir is synced). Default: "
                               "the config's out_dir, else out/.")
model_option = click.option("--model", help="Embedding model from the registry (see `pipeline models`).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
exact_tokens_option = click.option(
    "--exact-tokens", is_flag=True,
    help="Size chunks by the provider's own token count (GigaChat /tokens/count, each distinct text asked once) "
         "instead of the offline bound.")
follow_symlinks_option = click.option(
    "--follow-symlinks/--no-follow-symlinks", default=None,
    help="Read through symbolic links in the corpus, even ones pointing out of it (default: skipped and "
         "counted; [sources] follow_symlinks).")


class _Commands(click.Group):
    """Loads the emulator command (starlette, uvicorn: 70 ms) only when it is asked for or listed.

    Every command gets --deadline here, in one place.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any(p.name == "deadline" for p in cmd.params):
            cmd.params.append(deadline_option())
        super().add_command(cmd, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "emulator"})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "emulator" and name not in self.commands:
            try:
                from .emulator.cli import emulator_command
            except ImportError:  # pragma: no cover - the emulator's server dependencies are optional
                return None
            self.add_command(emulator_command, "emulator")
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Chunk a corpus, embed it (GigaChat or the offline local model), index it with FAISS, search it.

    \b
    Quick start (offline, no credentials):
      pipeline embed data/          # chunk, embed, write Parquet, build the index in out/
      pipeline search "how do I create a virtual environment"
      pipeline ask "как испечь хлеб на закваске?"
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)


def _embed_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.argument("corpus", required=False, type=click.Path(path_type=Path)),
        config_option, model_option, out_option,
        click.option("--no-index", is_flag=True, help="Write the Parquet vectors but do not build the index."),
        click.option("--new-index", is_flag=True,
                     help="If --out holds an index of another model or chunker, build a separate one beside it "
                          "(OUT.<model>-<fingerprint>) instead of refusing."),
        click.option("--batch-size", type=click.IntRange(min=1), help="Texts per embedding request."),
        exact_tokens_option, follow_symlinks_option,
        click.option("--verify", is_flag=True,
                     help="Read and hash every file, even those whose size and modification time are the ones "
                          "the live index recorded (skipped by default: a re-index costs what changed)."),
        click.option("--allow-shrink", is_flag=True,
                     help="Publish even when the corpus is empty or lost more than [sources] max_deleted_share "
                          "(default 50%) of the live documents; without it such a run is refused (exit 2)."),
        click.option("--plan", "plan_only", is_flag=True,
                     help="Print chunks, tokens, requests, cache hits and the expected time; send nothing."),
        click.option("--latency-ms", type=click.FloatRange(min=0, min_open=True),
                     help="With --plan: expected time of one request (default: a guess, printed)."),
        click.option("--progress/--no-progress", default=True, help="Show progress bars on stderr."),
        click.option("--engine", metavar="local|ray",
                     help="Where documents are read, chunked and embedded: this process (local, the default) or a "
                          "Ray cluster (ray: needs pip install 'pipeline[ray]'). [engine] name."),
        click.option("--ray-address", metavar="ADDR",
                     help="With --engine ray: the cluster (HOST:PORT of its head, or ray://HOST:PORT); default "
                          "[engine] ray_address, else Ray's own choice (RAY_ADDRESS, else the latest local cluster)."),
        click.option("--ray-workers", metavar="N",
                     help="With --engine ray: embedding actors (default [engine] workers; 0: one per CPU)."),
        json_option,
    ]):
        f = option(f)
    return f


def _with_engine_options(config: Config, engine: str | None, ray_address: str | None,
                         ray_workers: str | None) -> Config:
    """--engine, --ray-address and --ray-workers over [engine]; a bad value is one ConfigError naming its option."""
    from dataclasses import replace

    from .errors import ConfigError

    changes: dict[str, Any] = {}
    if engine is not None:
        if engine not in ("local", "ray"):
            raise ConfigError(f"--engine: expected local or ray, got {engine!r}")
        changes["name"] = engine
    if ray_address is not None:
        changes["ray_address"] = ray_address
    if ray_workers is not None:
        try:
            changes["workers"] = int(ray_workers)
        except ValueError:
            changes["workers"] = -1
        if changes["workers"] < 0:
            raise ConfigError(f"--ray-workers: expected a number of workers (0: one per CPU), got {ray_workers!r}")
    return config.with_overrides(engine=replace(config.engine, **changes))


def _run_embed(corpus: Path | None, config_path: Path | None, model: str | None, out_dir: str | None,
               no_index: bool, new_index: bool, batch_size: int | None, exact_tokens: bool,
               follow_symlinks: bool | None, verify: bool, allow_shrink: bool, plan_only: bool,
               latency_ms: float | None, progress: bool, engine: str | None, ray_address: str | None,
               ray_workers: str | None, as_json: bool) -> None:
    from dataclasses import replace

    config = _config(config_path, model=model, corpus=corpus, out_dir=out_dir, exact_tokens=exact_tokens,
                     follow_symlinks=follow_symlinks)
    config = _with_engine_options(config, engine, ray_address, ray_workers)
    if batch_size:
        config = config.with_overrides(embedding=replace(config.embedding, batch_size=batch_size))
    if plan_only:
        from . import api

        plan = api.plan(config, latency_ms=latency_ms)
        _print_json(asdict(plan)) if as_json else click.echo(plan.summary())
        return
    # Before the stages are imported (numpy, pyarrow: 0.3 s), the tokenizer starts loading and the
    # provider fetches its token, so both are ready when the first batch is.
    from .providers import warmed_provider

    provider = None
    # (The Ray engine embeds on the cluster: this process needs no provider, so fetches no token.)
    if config.corpus is not None and config.corpus.exists() and config.engine.name == "local":
        spec = config.model_spec()
        preload_counter(spec)
        provider = warmed_provider(spec, config)
    from . import api

    report = api.embed(config, build=not no_index, new_index=new_index,
                       progress=_progress_bars(progress and not as_json), provider=provider, allow_shrink=allow_shrink,
                       verify=verify)
    if as_json:
        _print_json(asdict(report))
    else:
        for reason in report.failure_reasons:
            click.echo(f"failed: {reason}", err=True)
        if report.index:
            ix = report.index
            how = ix.get("mode", "built")
            why = f" ({ix['mode_reason']})" if how == "rebuilt" and ix.get("mode_reason") else ""
            change = f", +{ix.get('added', 0)} -{ix.get('removed', 0)}" if how == "updated" else ""
            click.echo(f"index {how}{why}: {ix['factory']} over {ix['vectors']} vectors{change}, recall@10 "
                       f"{ix['recall_at_10']:.3f}, p50 {ix['latency_p50_ms']:.2f} ms -> {report.out_dir}", err=True)
        click.echo(report.summary())
    if report.exit_code == api.EXIT_NOTHING_EMBEDDED:
        click.echo(f"error: nothing could be embedded ({report.failed_chunks} chunks failed): "
                   f"{report.failure_reasons[0] if report.failure_reasons else 'see the run report'}", err=True)
    sys.exit(report.exit_code)


@cli.command()
@_embed_options
def embed(**options: Any) -> None:
    """Chunk, embed and index CORPUS (a folder or file of .txt, .md, .html, .jsonl).

    Unchanged chunks reuse cached vectors; a failed document is left out, reported, and retried on
    the next run (exit code 3). The previous index keeps serving until the new one is complete.
    """
    _run_embed(**options)


@cli.command()
@_embed_options
def reindex(**options: Any) -> None:
    """Bring the index up to date with CORPUS: only new and changed documents are embedded.

    For cron or systemd timers: deleted documents drop out, unchanged ones cost a hash. Exit codes:
    0 done, 3 some documents failed (they keep their previous version and are retried next run),
    1 nothing could be embedded (credentials, TLS, DNS, a dead server), 2 bad input or a corpus that
    lost too much (see --allow-shrink), 75 another run holds the lock, 124 past --deadline.
    The JSON run report is OUT/run-report.json.

    \b
    crontab:  */30 * * * *  cd /srv/pipeline && .venv/bin/pipeline reindex data/ --no-progress
    """
    _run_embed(**options)


@cli.command()
@config_option
@out_option
@click.option("--index-type", type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivfsq", "ivfpq"]),
              help="Index family; auto picks from the vector count and the memory budget "
                   "(flat: exact; hnsw: graph; ivf: inverted lists; ivfsq: with 8-bit codes; ivfpq: PQ codes).")
@click.option("--memory-budget", help="Peak memory the index build may use (the index, read buffers and "
              "runtime), e.g. 2GiB; auto picks the best index that fits.")
# --engine / --ray-address of the sharded index build (index/sharded.py)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: add the vectors of an inverted-list index in shards on a Ray cluster, then merge.")
@click.option("--ray-address", help="The Ray cluster for --engine ray (host:port); default RAY_ADDRESS, else "
              "a local Ray instance.")
@json_option
def index(config_path: Path | None, out_dir: str | None, index_type: str | None, memory_budget: str | None,
          engine: str, ray_address: str | None, as_json: bool) -> None:
    """(Re)build the FAISS index from the Parquet vectors of the live snapshot."""
    config = _config(config_path, out_dir=out_dir)
    config = _with_index_options(config, index_type, memory_budget)
    from . import api

    report = api.build_index_for(config, progress=_progress_bars(not as_json), engine=engine,
                                 ray_address=ray_address)
    if as_json:
        _print_json(asdict(report))
    else:
        click.echo(f"{report.factory} ({report.kind}): {report.reason}")
        click.echo(f"{report.vectors} vectors x {report.dimension}, recall@10 {report.recall_at_10:.3f} "
                   f"(target {report.target_recall}) at {report.search_param or 'exact search'}, "
                   f"p50 {report.latency_p50_ms:.2f} ms, p95 {report.latency_p95_ms:.2f} ms, "
                   f"index {report.index_bytes / 2**20:.1f} MiB of {report.memory_budget_bytes / 2**20:.0f} MiB "
                   f"budget, peak RSS {report.peak_rss_bytes / 2**20:.0f} MiB, {report.build_seconds:.1f} s")


def _snippet(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _search_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--path, --type, --filter and --hybrid, shared by search and ask; they arrive as one `filters` + `hybrid`."""
    import functools

    @click.option("--path", "path_glob", metavar="GLOB", help="Only sources whose path matches, e.g. 'en/*', '*.md'.")
    @click.option("--type", "doc_type", metavar="TYPE", help="Only documents of this type: txt, md, html, jsonl.")
    @click.option("--filter", "fields", metavar="KEY=VALUE", multiple=True,
                  help="Only .jsonl records whose metadata KEY matches VALUE (a glob; a.b for nested keys). Repeatable.")
    @click.option("--hybrid", is_flag=True, help="Fuse BM25 keyword hits with the semantic ones (reciprocal rank).")
    @functools.wraps(f)
    def wrapper(path_glob: str | None, doc_type: str | None, fields: tuple[str, ...], **kwargs: Any) -> Any:
        from .filters import SearchFilter

        filters = SearchFilter.parse(path=path_glob, doc_type=doc_type, fields=fields)
        return f(filters=filters or None, **kwargs)

    return wrapper


@cli.command()
@click.argument("query")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(min=1), help="Results to return.")
@config_option
@model_option
@out_option
@_search_options
@json_option
def search(query: str, k: int, config_path: Path | None, model: str | None, out_dir: str | None,
           as_json: bool, filters: Any = None, hybrid: bool = False) -> None:
    """Semantic search: the K chunks closest to QUERY, with score, source and a snippet.

    \b
    Filters and hybrid search:
      pipeline search "sourdough" --path 'ru/*' --type md
      pipeline search "espresso" --filter topic=coffee --hybrid
    """
    config = _config(config_path, out_dir=out_dir)
    from . import api

    result = api.search(config, query, k=k, model=model, filters=filters, hybrid=hybrid)
    if as_json:
        _print_json(asdict(result))
        return
    for hit in result.hits:
        click.echo(f"{hit.rank:>2}. {hit.score:.3f}  {hit.source_path} [{hit.char_start}:{hit.char_end}]"
                   f"{'  ' + hit.doc_id.split('#', 1)[1] if '#' in hit.doc_id else ''}")
        headings = hit.metadata.get("headings")
        if isinstance(headings, list) and headings:  # contextual chunks: where in its document the chunk is
            click.echo(f"    § {_snippet(' › '.join(map(str, headings)))}")
        click.echo(f"    {_snippet(hit.text)}")
    if not result.hits:
        click.echo("no results")


@cli.command()
@click.argument("question")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(min=1), help="Chunks to retrieve.")
@config_option
@model_option
@out_option
@click.option("--chat-model", help="Chat model that writes the answer (GigaChat-2-Lite, GigaChat-2-Pro, GigaChat-2-Max, "
              "or an openai-provider model of `pipeline models`); 'none': the offline extractive answer. "
              "Default: [ask] chat_model ('auto': GigaChat-2-Lite when GigaChat credentials are set).")
@_search_options
@json_option
def ask(question: str, k: int, config_path: Path | None, model: str | None, out_dir: str | None,
        chat_model: str | None, as_json: bool, filters: Any = None, hybrid: bool = False) -> None:
    """Answer QUESTION from the indexed corpus, citing sources as [n].

    A chat model's answer is streamed as it arrives, then checked: every [n] must be a source it was
    given. With --json it answers in a JSON schema (answer, citations with chunk ids and offsets).
    """
    config = _config(config_path, out_dir=out_dir)
    shown: list[str] = []

    def on_delta(text: str) -> None:
        shown.append(text)
        click.echo(text, nl=False)

    def on_search(query: str) -> None:
        click.echo(f"[searching the corpus: {query}]", err=True)

    try:
        from . import api

        answer = api.ask(config, question, k=k, model=model, chat_model=chat_model, structured=as_json,
                         on_delta=None if as_json else on_delta, on_search=None if as_json else on_search,
                         filters=filters, hybrid=hybrid)
    except PipelineError:
        if shown:  # end the incomplete answer's line before main() prints the error
            click.echo()
        raise
    if as_json:
        _print_json(asdict(answer))
        return
    click.echo("" if shown else answer.text)
    for warning in answer.warnings:
        click.echo(f"warning: {warning}", err=True)
    if not answer.grounded and not answer.warnings:
        click.echo("warning: the answer cites none of the retrieved sources", err=True)
    click.echo("\nSources:")
    for s in answer.sources:
        mark = "*" if s.n in answer.cited else " "
        click.echo(f"{mark}[{s.n}] {s.source_path} chars {s.char_start}-{s.char_end} (score {s.score:.3f})")


@cli.command("eval")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@config_option
@model_option
@out_option
@click.option("--work", "work_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the dataset's corpus is embedded and indexed. Default: OUT/eval/<dataset>/<model>.")
@click.option("--index-type", type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivfsq", "ivfpq"]),
              help="Index to evaluate against exact search (default: the config's, usually auto).")
@click.option("--memory-budget", help="Peak memory the index build may use (the index, read buffers and "
              "runtime), e.g. 2GiB; auto picks the best index that fits.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Cut-off for the metrics.")
@click.option("--progress/--no-progress", default=True, help="Show progress bars on stderr.")
@json_option
def eval_command(dataset: Path, config_path: Path | None, model: str | None, out_dir: str | None,
                 work_dir: Path | None, index_type: str | None, memory_budget: str | None, k: int, progress: bool,
                 as_json: bool) -> None:
    """Retrieval quality on DATASET (BEIR layout: queries, corpus, qrels; one .json file or a folder).

    The corpus goes through the normal pipeline (chunk, embed, index); chunk hits count for their
    documents. Reports recall@1, recall@K, MRR@K and nDCG@K for exact search, the chosen index, BM25
    and hybrid (index + BM25), and the index's recall@10 against exact search on the dataset's queries.
    """
    config = _config(config_path, model=model, out_dir=out_dir)
    config = _with_index_options(config, index_type, memory_budget)
    from . import api

    report = api.evaluate(config, dataset, work_dir=work_dir, k=k, progress=_progress_bars(progress and not as_json))
    if as_json:
        _print_json(asdict(report))
        return
    click.echo(f"{report.dataset}: {report.queries} queries, {report.documents} documents, {report.chunks} chunks, "
               f"model {report.model}, {report.seconds:.0f} s")
    click.echo(report.table())
    click.echo(f"index recall@10 against exact search on these queries: {report.ann_recall_at_10:.3f}")


@cli.command()
@config_option
@json_option
def models(config_path: Path | None, as_json: bool) -> None:
    """The model registry: provider, kind, input limit, dimension."""
    config = _config(config_path)
    from . import api

    specs = api.list_models(config)
    if as_json:
        _print_json([asdict(s) for s in specs])
        return
    header = f"{'name':<18} {'provider':<9} {'kind':<6} {'max tokens':>10} {'dim':>5}  description"
    click.echo(header)
    click.echo("-" * len(header))
    for s in specs:
        default = " (default)" if s.name == config.model else ""
        click.echo(f"{s.name:<18} {s.provider:<9} {s.kind:<6} {s.max_input_tokens:>10} "
                   f"{s.dimension or '':>5}  {s.description}{default}")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@cli.group("cache")
def cache_group() -> None:
    """The vector cache (raw vectors by model key and content hash, in the cache directory)."""


@cache_group.command("stats")
@config_option
@json_option
def cache_stats_command(config_path: Path | None, as_json: bool) -> None:
    """Entries and bytes of the vector cache, per model key."""
    config = _config(config_path)
    from . import api

    stats = api.cache_stats(config)
    if as_json:
        _print_json({"cache_dir": str(config.cache_dir), "keys": [asdict(s) for s in stats]})
        return
    click.echo(f"vector cache: {config.cache_dir}")
    for s in stats:
        note = "  (old Parquet parts: imported when this model next runs)" if s.format != "sqlite" else ""
        click.echo(f"  {s.key}: {s.entries:,} vectors of dim {s.dimension}, {_mb(s.file_bytes)} on disk{note}")
    click.echo(f"total: {sum(s.entries for s in stats):,} vectors, {_mb(sum(s.file_bytes for s in stats))}")


@cache_group.command("prune")
@config_option
@click.option("--out", "out_dirs", multiple=True, metavar="DIR|URI",
              help="Output directory whose live snapshot's vectors are kept (repeatable). Default: the config's "
                   "out_dir. Only the models of these snapshots are pruned; a --new-index sibling must be given too.")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; delete nothing.")
@json_option
def cache_prune_command(config_path: Path | None, out_dirs: tuple[str, ...], dry_run: bool,
                        as_json: bool) -> None:
    """Remove cached vectors that no live snapshot of the given output directories uses, then VACUUM."""
    config = _config(config_path)
    from . import api

    report = api.prune_cache(config, list(out_dirs) or None, dry_run=dry_run)
    if as_json:
        _print_json(asdict(report))
        return
    verb = "would remove" if dry_run else "removed"
    for r in report.results:
        click.echo(f"{r.key}: {verb} {r.removed:,} vectors ({_mb(r.removed_vector_bytes)}), kept {r.kept:,}; "
                   f"file {_mb(r.file_bytes_before)} -> {_mb(r.file_bytes_after)}")
    for key in report.untouched_keys:
        click.echo(f"{key}: not pruned (no given output directory uses this model)")
    click.echo(f"{verb} {report.removed:,} vectors, {_mb(report.bytes_freed)} freed")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@config_option
@model_option
@exact_tokens_option
@follow_symlinks_option
@json_option
def chunk(path: Path, config_path: Path | None, model: str | None, exact_tokens: bool, follow_symlinks: bool | None,
          as_json: bool) -> None:
    """Show the chunks of a file or folder as they would be sent to the model."""
    config = _config(config_path, model=model, exact_tokens=exact_tokens, follow_symlinks=follow_symlinks)
    count = 0
    from . import api

    for c in api.chunk_corpus(config, path):
        count += 1
        if as_json:
            row = {"chunk_id": c.chunk_id, "source_path": c.source_path, "char_start": c.char_start,
                   "char_end": c.char_end, "token_count": c.token_count, "overlap_chars": c.overlap_chars,
                   "text": c.text}
            click.echo(json.dumps({**row, "context": c.context} if c.context else row, ensure_ascii=False))
        else:
            click.echo(f"--- {c.chunk_id}  chars {c.char_start}-{c.char_end}  {c.token_count} tokens")
            click.echo(c.embed_text)  # the context (contextual chunks) is sent in front of the chunk's text
    if not as_json:
        click.echo(f"{count} chunks for model {config.model}", err=True)


def main() -> NoReturn:
    """The console script (and `python -m pipeline`): one command, then an immediate exit with its code."""
    # CPython's default collection thresholds: a run no longer keeps its chunks, so full collections are
    # cheap, while rarer ones (100k young objects) let cyclic garbage from each HTTP exchange pile up to
    # 1.1 GB at 125k chunks instead of 0.47 GB (bench/scale.md). What the imports made is frozen: never rescanned.
    gc.freeze()
    _exit_now(_run())


def _run() -> int:
    try:
        result = cli.main(standalone_mode=False)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        click.echo(e.code, err=True)
        return 1
    except PipelineError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return result if isinstance(result, int) else 0


def _exit_now(code: int) -> NoReturn:
    """Exit without tearing the interpreter down: after a large run that took 0.2 s (freeing every module
    and the last garbage collection) with nothing left to do. By now files are closed and published and
    locks released; atexit handlers still run and stdio is flushed.
    """
    try:
        atexit._run_exitfuncs()
        logging.shutdown()
        with contextlib.suppress(OSError):  # stdout closed early (`| head`): nothing more to say anyway
            sys.stdout.flush()
        with contextlib.suppress(OSError):
            sys.stderr.flush()
    finally:
        os._exit(code)
