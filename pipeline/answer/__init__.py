"""Answer: from retrieved Hits to an Answer with checked [n] citations, extractive (offline) or from a chat model.

Sync, with no event loop; api.ask is its caller. Chat models come from providers.chat_model.
"""

from __future__ import annotations

from .chat import AUTO_CHAT_MODEL, chat_answer, resolve_chat_model
from .extractive import extractive_answer
from .records import Answer, Citation, Source

__all__ = ["AUTO_CHAT_MODEL", "Answer", "Citation", "Source", "chat_answer", "extractive_answer",
           "resolve_chat_model"]
