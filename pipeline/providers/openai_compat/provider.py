"""OpenAI-compatible provider: the EmbeddingProvider over /embeddings and the ChatModel over the chat client.

Applies instructions and checks shapes; batching, retries and rate limits stay in pipeline.embedding.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ...config import OpenAISettings
from ...errors import BadRequestError
from ...records import ModelSpec
from .. import http
from ..chat import ChatDelta, ChatReply
from ..embeddings_json import LARGE_BODY_BYTES
from . import _wire
from .client import OpenAIChatClient, check_response, httpx_error

__all__ = ["OpenAIChatModel", "OpenAIEmbeddingProvider"]

MAX_IMAGE_BYTES = 15 * 1024 * 1024  # GigaChat's limit for one image, behind a proxy too (gigachat-api.md §8)


class OpenAIEmbeddingProvider:
    """EmbeddingProvider over POST {base_url}/embeddings; the registry name is the server's model name."""

    name = _wire.PROVIDER

    def __init__(self, spec: ModelSpec, settings: OpenAISettings) -> None:
        _wire.check_settings(settings)
        self.spec = spec
        self.settings = settings
        self._ssl = http.tls_context(settings.ca_bundle_file, label="[openai] ca_bundle_file")
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAIEmbeddingProvider(model={self.spec.name!r}, base_url={self.settings.base_url!r})"

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # connections belong to one event loop
            self._client = http.async_client(self._ssl, self.settings.timeout_s)
            self._loop = loop
        return self._client

    async def embed_batch(self, texts: Sequence[str], *, is_query: bool = False,
                          on_received: Callable[[], None] | None = None) -> np.ndarray:
        """(len(texts), dimension) float32, raw from the server. Raises ProviderError subclasses."""
        if not texts:
            return np.zeros((0, self.spec.dimension), dtype=np.float32)
        prefix = self.spec.query_instruction if is_query else self.spec.passage_instruction
        inputs = [prefix + t for t in texts] if prefix else list(texts)
        endpoint = "/embeddings"
        try:
            resp = await self._http().post(self.settings.base_url + endpoint, headers=_wire.headers(self.settings),
                                           json={"model": self.spec.name, "input": inputs})
        except httpx.HTTPError as e:
            raise httpx_error(e, endpoint, self.settings) from None
        check_response(resp, endpoint)
        if on_received is not None:
            on_received()
        if len(resp.content) > LARGE_BODY_BYTES:  # decoding a big body would stall the event loop
            return await asyncio.to_thread(_wire.parse_embeddings, resp.content, len(texts), self.spec.dimension,
                                           endpoint)
        return _wire.parse_embeddings(resp.content, len(texts), self.spec.dimension, endpoint)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


def _opts(opts: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


class OpenAIChatModel:
    """ChatModel over OpenAIChatClient: tools for functions, response_format json_schema for structured output."""

    def __init__(self, spec: ModelSpec, settings: OpenAISettings) -> None:
        self.model = spec.name
        self._client = OpenAIChatClient(settings)

    def stream(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Iterator[ChatDelta]:
        return self._client.stream(messages, self.model, **_opts(opts))

    def chat(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> ChatReply:
        return self._client.chat(messages, self.model, **_opts(opts))

    def structured(self, messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any], name: str,
                   **opts: Any) -> tuple[dict[str, Any] | None, ChatReply]:
        return self._client.chat_json(messages, self.model, schema, name, **_opts(opts))

    def describe_image(self, prompt: str, path: Path) -> ChatReply:
        data = path.read_bytes()
        if len(data) > MAX_IMAGE_BYTES:  # LiteLLM would drop a failed upload and ask about no image at all
            raise BadRequestError(f"image of {len(data) / 1e6:.1f} MB exceeds the 15 MB limit per image",
                                  provider=_wire.PROVIDER)
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        return self.chat([{"role": "user", "content": prompt, "images": [url]}])

    def close(self) -> None:
        self._client.close()
