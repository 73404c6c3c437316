"""Provider contracts: what an embedding provider offers, its optional capabilities, and what a plugin registers.

Protocols only; batching, retries and rate limits live in pipeline.embedding, not in providers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ..records import ModelSpec

if TYPE_CHECKING:
    from ..config import Config
    from .chat import ChatModel

__all__ = ["ChatProviderPlugin", "EmbeddingProvider", "ProviderPlugin", "TokenCountingProvider",
           "WarmUpProvider"]


@runtime_checkable
class EmbeddingProvider(Protocol):
    """A batch of texts in, a float32 matrix (len(texts), spec.dimension) out, rows in input order.

    Providers return the service's raw vectors (not normalised) and raise pipeline.errors.ProviderError
    subclasses; they apply the model's query/passage instructions themselves. A remote provider calls
    `on_received()` once the response body is in hand, before decoding it: the embedder then lets the
    next request go while this one is decoded.
    """

    name: str
    spec: ModelSpec

    async def embed_batch(self, texts: Sequence[str], *, is_query: bool = False,
                          on_received: Callable[[], None] | None = None) -> np.ndarray: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class TokenCountingProvider(Protocol):
    """A provider that counts tokens as its service does (GigaChat: /tokens/count); for [chunking] exact_tokens."""

    async def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


@runtime_checkable
class WarmUpProvider(Protocol):
    """A provider that can start getting ready in the background (GigaChat: fetch the token) and return at once."""

    def warm_up(self) -> None: ...


@runtime_checkable
class ProviderPlugin(Protocol):
    """What a `pipeline.providers` entry point names: one provider's factories and checks, imports deferred.

    The registry calls check_credentials (raises ConfigError naming `what` and, if given, the `alternative`)
    before any factory.
    """

    name: str

    def endpoint(self, config: Config) -> str: ...

    def check_credentials(self, spec: ModelSpec, config: Config, *, what: str = "model",
                          alternative: str = "") -> None: ...

    def embedding_provider(self, spec: ModelSpec, config: Config) -> EmbeddingProvider: ...


@runtime_checkable
class ChatProviderPlugin(ProviderPlugin, Protocol):
    """A plugin whose provider also has chat models."""

    def chat_model(self, spec: ModelSpec, config: Config) -> ChatModel: ...
