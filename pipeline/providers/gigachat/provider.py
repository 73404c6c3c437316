"""GigaChat provider: the EmbeddingProvider for GigaChat embedding models, the ChatModel for its chat models.

Applies the model's instructions and checks shapes; batching, retries and rate limits stay in pipeline.embedding.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...config import GigaChatSettings
from ...records import ModelSpec
from ..chat import ChatDelta, ChatReply
from . import _wire
from ._chat_wire import Image, Message
from .auth import DEFAULT_EXPIRY_BUFFER_MS, TokenManager
from .client import USER_AGENT, AsyncGigaChatClient, GigaChatClient

__all__ = ["GigaChatChatModel", "GigaChatEmbeddingProvider"]


class GigaChatEmbeddingProvider:
    """Raw (unnormalised) float32 vectors from /embeddings; one token cache for its sync and async clients."""

    name = "gigachat"

    def __init__(self, spec: ModelSpec, settings: GigaChatSettings, *,
                 expiry_buffer_ms: int = DEFAULT_EXPIRY_BUFFER_MS) -> None:
        self.spec = spec
        self.settings = settings
        self._auth = TokenManager(settings, buffer_ms=expiry_buffer_ms, user_agent=USER_AGENT)
        self._aclient: AsyncGigaChatClient | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._client: GigaChatClient | None = None
        self._client_lock = threading.Lock()  # the warm-up's thread may make it while the caller asks
        self.tokens_used = 0  # cumulative prompt tokens the service reported for embedded texts
        self.last_usage_tokens: list[int] = []  # per-text tokens of the last batch

    @property
    def dimension(self) -> int:
        return self.spec.dimension

    @property
    def max_input_tokens(self) -> int:
        return self.spec.max_input_tokens

    @property
    def max_batch_texts(self) -> int:
        return self.spec.max_batch_texts

    def __repr__(self) -> str:
        return f"GigaChatEmbeddingProvider(model={self.spec.name!r}, base_url={self.settings.base_url!r})"

    def _async_client(self) -> AsyncGigaChatClient:
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient_loop is not loop:  # connections belong to one event loop
            self._aclient = AsyncGigaChatClient(self.settings, token_manager=self._auth)
            self._aclient_loop = loop
        return self._aclient

    def _sync_client(self) -> GigaChatClient:
        with self._client_lock:
            if self._client is None:
                self._client = GigaChatClient(self.settings, token_manager=self._auth)
            return self._client

    def _inputs(self, texts: Sequence[str], is_query: bool) -> list[str]:
        prefix = self.spec.query_instruction if is_query else self.spec.passage_instruction
        return [prefix + t for t in texts] if prefix else list(texts)

    def _accept(self, result: _wire.EmbeddingsResult, n: int) -> np.ndarray:
        if n == 0:
            return np.zeros((0, self.spec.dimension), dtype=np.float32)
        got = result.vectors.shape[1]
        if got != self.spec.dimension:
            raise _wire.bad_response("/embeddings", f"model {self.spec.name} returned {got}-dimensional vectors, "
                                     f"the registry says {self.spec.dimension}")
        self.last_usage_tokens = result.tokens
        self.tokens_used += sum(result.tokens)
        return result.vectors

    async def embed_batch(self, texts: Sequence[str], *, is_query: bool = False,
                          on_received: Callable[[], None] | None = None) -> np.ndarray:
        """(len(texts), dimension) float32, rows in input order. Raises ProviderError subclasses."""
        result = await self._async_client().embeddings(self._inputs(texts, is_query), self.spec.name,
                                                       on_received=on_received)
        return self._accept(result, len(texts))

    def embed_sync(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        """embed_batch without an event loop, for one-off query embedding in search."""
        return self._accept(self._sync_client().embeddings(self._inputs(texts, is_query), self.spec.name),
                            len(texts))

    def warm_up(self) -> None:
        """Start fetching the access token in a thread, so the first batch does not wait for it.

        The client (its TLS context: 50 ms) is made in that thread too, while the caller goes on.
        """
        self._auth.prefetch(lambda request: self._sync_client()._fetch_token(request))

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """The service's own counts from /tokens/count (text only, no instruction prefix)."""
        return await self._async_client().tokens_count(texts, self.spec.name)

    async def aclose(self) -> None:
        client, self._aclient = self._aclient, None
        if client is not None and self._aclient_loop is asyncio.get_running_loop():
            await client.aclose()
        self.close()

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _opts(opts: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


class GigaChatChatModel:
    """ChatModel over GigaChatClient (sync). Structured output is a forced function call, as litellm emulates it."""

    def __init__(self, spec: ModelSpec, settings: GigaChatSettings) -> None:
        self.model = spec.name
        self._client = GigaChatClient(settings)

    def stream(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Iterator[ChatDelta]:
        return self._client.stream(list(messages), model=self.model, **_opts(opts))

    def chat(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> ChatReply:
        return self._client.chat(list(messages), model=self.model, **_opts(opts))

    def structured(self, messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any], name: str,
                   **opts: Any) -> tuple[dict[str, Any] | None, ChatReply]:
        # chat_structured() returns only the arguments; chat() with the same forced call keeps finish_reason,
        # so a refusal (blacklist) or a cut (length) can be told from a malformed reply.
        fn = {"name": name, "description": f"Output structured response: {name}", "parameters": dict(schema)}
        reply = self.chat(messages, functions=[fn], function_call={"name": name}, **opts)
        fc = reply.function_call
        return (fc.arguments if fc is not None and fc.name == name else None), reply

    def describe_image(self, prompt: str, path: Path) -> ChatReply:
        return self._client.chat([Message(role="user", content=prompt, images=[Image(path=str(path))])],
                                 model=self.model)

    def close(self) -> None:
        self._client.close()
