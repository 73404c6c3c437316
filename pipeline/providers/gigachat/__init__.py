"""GigaChat (Sber): sync and async REST clients, token handling, and the embedding provider.

Public names only; the wire format lives in _wire.py, network I/O in client.py and nowhere else.
"""

from __future__ import annotations

from ._wire import (
    ChatDelta,
    ChatRequest,
    ChatResponse,
    EmbeddingsResult,
    FunctionCall,
    Image,
    Message,
    ModelInfo,
    Usage,
    is_vision_model,
)
from .auth import TokenManager
from .client import AsyncGigaChatClient, GigaChatClient
from .provider import GigaChatEmbeddingProvider

__all__ = [
    "AsyncGigaChatClient",
    "ChatDelta",
    "ChatRequest",
    "ChatResponse",
    "EmbeddingsResult",
    "FunctionCall",
    "GigaChatClient",
    "GigaChatEmbeddingProvider",
    "Image",
    "Message",
    "ModelInfo",
    "TokenManager",
    "Usage",
    "is_vision_model",
]
