"""GigaChat (Sber): sync and async REST clients, token handling, the embedding provider and the chat model.

Public names only; the wire format lives in _wire.py and _chat_wire.py, network I/O in client.py and nowhere else.
"""

from __future__ import annotations

from ..chat import ChatDelta, ChatReply, FunctionCall, Usage
from ._chat_wire import ChatRequest, Image, Message, is_vision_model
from ._wire import EmbeddingsResult, ModelInfo
from .auth import TokenManager
from .client import AsyncGigaChatClient, GigaChatClient
from .provider import GigaChatChatModel, GigaChatEmbeddingProvider

__all__ = [
    "AsyncGigaChatClient",
    "ChatDelta",
    "ChatReply",
    "ChatRequest",
    "EmbeddingsResult",
    "FunctionCall",
    "GigaChatChatModel",
    "GigaChatClient",
    "GigaChatEmbeddingProvider",
    "Image",
    "Message",
    "ModelInfo",
    "TokenManager",
    "Usage",
    "is_vision_model",
]
