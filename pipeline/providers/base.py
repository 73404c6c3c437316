"""Provider contracts: what an embedding provider must offer the embedder and search.

Protocols only; batching, retries and rate limits live in pipeline.embedding, not in providers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..records import ModelSpec

__all__ = ["EmbeddingProvider"]


@runtime_checkable
class EmbeddingProvider(Protocol):
    """A batch of texts in, a float32 matrix (len(texts), spec.dimension) out, rows in input order.

    Providers return the service's raw vectors (not normalised) and raise pipeline.errors.ProviderError
    subclasses; they apply the model's query/passage instructions themselves. A remote provider calls
    `on_received()` once the response body is in hand, before decoding it: the embedder then lets the
    next request go while this one is decoded. A provider may also offer `warm_up()`, which starts getting
    ready in the background and returns at once (GigaChat: fetch the token while the corpus is read).
    """

    name: str
    spec: ModelSpec

    async def embed_batch(self, texts: Sequence[str], *, is_query: bool = False,
                          on_received: Callable[[], None] | None = None) -> np.ndarray: ...

    async def aclose(self) -> None: ...
