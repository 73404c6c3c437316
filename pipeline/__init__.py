"""pipeline: batch embedding and vector indexing for GigaChat-class embedding APIs.

Public entry point: the verbs (embed, search, ask, ...), the records they return, and the errors;
loaded lazily so `pipeline.emulator` or `pipeline.errors` do not pull in FAISS.
"""

from __future__ import annotations

import importlib
import os

# FAISS's OpenMP threads spin while waiting by default; on a shared 2-core machine that made small
# trainings ~10x slower. Passive waiting costs nothing measurable on an idle one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "api": ["EmbedPlan", "EmbedReport", "SearchResult", "ask", "build_index_for", "cache_stats", "chunk_corpus",
            "embed", "evaluate", "list_models", "plan", "prune_cache", "search"],
    "answer": ["Answer", "Source"],
    "config": ["Config", "load_config"],
    "errors": ["AuthError", "BadRequestError", "BadResponseError", "ConfigError", "ContentRefusedError",
               "IndexBuildError", "LockHeldError", "ModelMismatchError", "NetworkError", "PipelineError",
               "ProviderError", "RateLimitError", "RequestTooLargeError", "ServerError", "SourceError",
               "StoreError"],
    "records": ["Chunk", "Document", "Hit", "ModelSpec"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .answer import Answer, Source  # noqa: F401
    from .api import (  # noqa: F401
        EmbedPlan,
        EmbedReport,
        SearchResult,
        ask,
        build_index_for,
        cache_stats,
        chunk_corpus,
        embed,
        evaluate,
        list_models,
        plan,
        prune_cache,
        search,
    )
    from .config import Config, load_config  # noqa: F401
    from .errors import *  # noqa: F403
    from .records import Chunk, Document, Hit, ModelSpec  # noqa: F401
