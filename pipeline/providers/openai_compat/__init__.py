"""OpenAI-compatible provider: embeddings and chat from any server speaking OpenAI's /v1 API (LiteLLM, vLLM).

Public names only: the wire format lives in _wire.py, network I/O in client.py and provider.py; no openai SDK.
"""

from __future__ import annotations

from ._wire import parse_embeddings, to_openai_messages
from .client import OpenAIChatClient
from .provider import OpenAIChatModel, OpenAIEmbeddingProvider

__all__ = ["OpenAIChatClient", "OpenAIChatModel", "OpenAIEmbeddingProvider", "parse_embeddings",
           "to_openai_messages"]
