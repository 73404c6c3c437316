"""Run context: what an embed run (and its plan) works from: model, chunker, fingerprint, cache key, output.

Also the output directory's lock and the one rule for owning the run's provider; no embedding happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .chunking import ChunkSettings
from .config import Config
from .errors import ConfigError, LockHeldError, ModelMismatchError, SourceError, StoreError
from .providers import EmbeddingProvider, embedding_provider, provider_endpoint
from .providers.base import TokenCountingProvider
from .providers.retry import RetryPolicy
from .records import ModelSpec
from .remote import live_fingerprint, synced
from .store import (
    Snapshot,
    VectorCache,
    cache_key,
    current_snapshot,
    fingerprint_id,
    remove_stray_files,
    snapshot_fingerprint,
)
from .tokens import CachedCounter, TokenCounter, token_counter_for

__all__ = ["CONTEXTUAL_DEFAULT", "OwnedProvider", "RunContext", "chunk_counter", "contextual_setting", "locked",
           "run_spec"]

EXACT_OVERHEAD_TOKENS = 5  # GigaChat's embeddings count runs 5 above /tokens/count (api doc §5.6)
CONTEXTUAL_DEFAULT = True  # [chunking] contextual when unset and there is no live index to follow: pyfaq says it helps (bench/eval-results.md)


def contextual_setting(config: Config, out_dir: Path) -> bool:
    """[chunking] contextual if set; unset, the live index's own setting, so that a changed default never
    re-chunks (and re-embeds) an existing index; with no live index, CONTEXTUAL_DEFAULT."""
    if config.chunking.contextual is not None:
        return config.chunking.contextual
    try:
        remote = config.out_uri and out_dir == config.out_dir
        live = live_fingerprint(config) if remote else snapshot_fingerprint(out_dir)
    except StoreError:  # a damaged output directory: the run that reads it says so, `pipeline chunk` need not
        live = None
    if live is None:
        return CONTEXTUAL_DEFAULT
    return bool(live.get("chunking", {}).get("contextual", False))


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
        return list(asyncio.run(RetryPolicy.for_config(config).acall(lambda: provider.count_tokens(texts))))

    return CachedCounter(f"{spec.provider}-exact", count_many, overhead_tokens=EXACT_OVERHEAD_TOKENS)


@contextlib.contextmanager
def locked(config: Config) -> Iterator[None]:
    """Hold the output directory's run lock (LockHeldError when another run has it), crashed runs' leftovers
    removed. A remote output's mirror is synced under it: pulled before the block, pushed after it
    (remote.synced).
    """
    out_dir = config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out_dir / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LockHeldError(f"{out_dir}: another pipeline run holds the lock ({out_dir / '.lock'})") from None
    except OSError as e:  # not "held": this file system cannot lock (NFS without lockd), which will not pass
        raise StoreError(f"{out_dir / '.lock'}: cannot take the run lock: {e.strerror or e} (errno "
                         f"{errno.errorcode.get(e.errno or 0, e.errno)}); the file system may not support "
                         "locks: put --out on a local disk") from None
    try:
        remove_stray_files(out_dir)  # a crashed run's temporary files and unpublished snapshots
        with synced(config):
            yield
    finally:
        lock.release()


def run_spec(config: Config) -> ModelSpec:
    """The model of a run over config's corpus. Raises ConfigError (no corpus) or SourceError (none there)."""
    if config.corpus is None:
        raise ConfigError("no corpus: give CORPUS or set `corpus` in the config file")
    if not config.corpus.exists():
        raise SourceError(f"{config.corpus}: corpus path does not exist")
    return config.model_spec()


@dataclass
class RunContext:
    """What an embed run (and its plan) works from: model, chunking, fingerprint, output and its live snapshot.

    `config.out_dir` is resolved (a --new-index sibling when the live index has another fingerprint);
    `previous` and `manifest` are read by read_previous(), under the lock for a run that writes.
    """

    config: Config
    spec: ModelSpec
    settings: ChunkSettings
    counter: TokenCounter  # the chunker's: see chunk_counter
    fingerprint: dict[str, Any]
    previous: Snapshot | None = None
    manifest: dict[str, Any] | None = None

    @classmethod
    def open(cls, config: Config, spec: ModelSpec, *, new_index: bool = False) -> RunContext:
        settings = ChunkSettings.for_model(spec, config.chunking, contextual=contextual_setting(config, config.out_dir))
        counter = chunk_counter(config, spec)
        chunking: dict[str, Any] = {"max_tokens": settings.max_tokens, "target_tokens": settings.target_tokens,
                                    "overlap_tokens": settings.overlap_tokens, "tokenizer": counter.name}
        if settings.contextual:  # no key when off: the fingerprints of indexes built before it stay valid
            chunking["contextual"] = True
        fp = {
            "model": spec.name, "provider": spec.provider, "endpoint": provider_endpoint(spec, config),
            "dimension": spec.dimension, "normalize": spec.normalize,
            "query_instruction": spec.query_instruction, "passage_instruction": spec.passage_instruction,
            "chunking": chunking,
        }
        if new_index:
            live = live_fingerprint(config) if config.out_uri else snapshot_fingerprint(config.out_dir)
            if live is not None and fingerprint_id(live) != fingerprint_id(fp):
                suffix = f".{fp['model']}-{fingerprint_id(fp)[:8]}"
                config = config.with_out(config.out_uri + suffix if config.out_uri
                                         else config.out_dir.with_name(config.out_dir.name + suffix))
        return cls(config, spec, settings, counter, fp)

    @property
    def out_dir(self) -> Path:
        return self.config.out_dir

    @property
    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint)

    @property
    def cache_key(self) -> str:
        """Vectors depend on model, endpoint and passage instruction, not on chunking or normalisation."""
        return cache_key(self.fingerprint)

    def cache(self) -> VectorCache:
        return VectorCache(self.config.cache_dir, self.cache_key, self.spec.dimension, normalize=self.spec.normalize)

    def read_previous(self) -> None:
        """The live snapshot of out_dir and its manifest (None, None before the first run)."""
        self.previous = current_snapshot(self.out_dir) if self.out_dir.exists() else None
        self.manifest = self.previous.manifest() if self.previous else None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold out_dir's run lock, with the previous snapshot read under it. Raises LockHeldError."""
        with locked(self.config):
            self.read_previous()
            yield

    def foreign(self) -> bool:
        """The live snapshot was built with another fingerprint (model, endpoint, chunking...)."""
        return bool(self.manifest) and self.manifest.get("fingerprint_id") != self.fingerprint_id  # type: ignore[union-attr]

    def mismatch(self) -> ModelMismatchError:
        was = (self.manifest or {}).get("fingerprint", {})
        return ModelMismatchError(
            f"{self.config.out_label} holds an index of {was.get('model')!r} with other settings "
            f"(fingerprint {(self.manifest or {}).get('fingerprint_id')}); this run would be {self.spec.name!r} "
            f"({self.fingerprint_id}). Use --new-index to build beside it, or --out another directory")

    def snapshot_meta(self) -> dict[str, Any]:
        return {"model": self.spec.name, "dimension": self.spec.dimension, "normalize": self.spec.normalize,
                "fingerprint": self.fingerprint, "fingerprint_id": self.fingerprint_id,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class OwnedProvider:
    """The run's embedding provider (the caller's, or made here) and the one rule for closing it.

    The run owns it from the start and closes it exactly once: inside the event loop that embedded with it
    (aclose, at the end of that loop), else when the run ends (close).
    """

    def __init__(self, provider: EmbeddingProvider | None) -> None:
        self.provider = provider

    def get(self, spec: ModelSpec, config: Config) -> EmbeddingProvider:
        """The provider, made now if none was given or warmed (a missing credential raises here)."""
        if self.provider is None:
            self.provider = embedding_provider(spec, config)
        return self.provider

    async def aclose(self) -> None:
        provider, self.provider = self.provider, None
        if provider is not None:
            await provider.aclose()

    def close(self) -> None:
        if self.provider is not None:
            asyncio.run(self.aclose())
