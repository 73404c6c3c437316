"""Answer: the chat path of `ask`: prompt fitting, chat backends (GigaChat, OpenAI-compatible), the answer loop.

Sync, with no event loop; api.ask is its caller. Offline (no chat model) only resolve_chat_model runs.
"""

from __future__ import annotations

from .backends import AUTO_CHAT_MODEL, ChatBackend, chat_backend, resolve_chat_model
from .chat import chat_answer

__all__ = ["AUTO_CHAT_MODEL", "ChatBackend", "chat_answer", "chat_backend", "resolve_chat_model"]
