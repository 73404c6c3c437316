"""Chat vocabulary: the records every chat client returns (ChatReply, ChatDelta, FunctionCall, Usage) and ChatModel.

Plain values and a Protocol, no I/O; messages are GigaChat-shaped dicts (function_call, role function).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import ContentRefusedError

__all__ = ["ChatDelta", "ChatModel", "ChatReply", "FunctionCall", "Usage"]

REFUSED = "blacklist"  # the finish_reason of a refusal (OpenAI's content_filter is mapped to it)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    precached_prompt_tokens: int = 0


@dataclass(frozen=True)
class FunctionCall:
    """A call the model asks for; call_id is the OpenAI tool call id ("" for GigaChat)."""

    name: str
    arguments: dict[str, Any]
    call_id: str = ""

    def message(self, functions_state_id: str | None = None) -> dict[str, Any]:
        """The assistant turn that made this call, to append to the conversation (with GigaChat's state id)."""
        out: dict[str, Any] = {"role": "assistant", "content": "",
                               "function_call": {"name": self.name, "arguments": self.arguments}}
        if self.call_id:
            out["call_id"] = self.call_id
        if functions_state_id:
            out["functions_state_id"] = functions_state_id
        return out


@dataclass(frozen=True)
class ChatReply:
    """The first choice of a chat completion; finish_reason "blacklist" means the service refused."""

    content: str
    finish_reason: str | None = None
    function_call: FunctionCall | None = None
    usage: Usage | None = field(default_factory=Usage)  # None: the server reported none
    role: str = "assistant"
    functions_state_id: str | None = None
    model: str = ""

    @property
    def refused(self) -> bool:
        return self.finish_reason == REFUSED

    def raise_for_refusal(self) -> ChatReply:
        """self, or ContentRefusedError when the service refused to answer (finish_reason blacklist)."""
        if self.refused:
            raise ContentRefusedError("the model refused to answer (finish_reason blacklist)",
                                      endpoint="/chat/completions", status=200)
        return self

    def message(self) -> dict[str, Any]:
        """This reply as an assistant message, ready to append to the conversation."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.function_call is not None:
            out["function_call"] = {"name": self.function_call.name, "arguments": self.function_call.arguments}
        if self.functions_state_id:
            out["functions_state_id"] = self.functions_state_id
        return out


@dataclass(frozen=True)
class ChatDelta:
    """One streamed piece: a content fragment; the last carries finish_reason, usage and any function call."""

    content: str = ""
    finish_reason: str | None = None
    function_call: FunctionCall | None = None
    usage: Usage | None = None
    role: str | None = None
    functions_state_id: str | None = None
    model: str = ""


@runtime_checkable
class ChatModel(Protocol):
    """One chat model behind some API: stream a turn, complete a turn, answer in a JSON schema, describe an image.

    Blocking; raises pipeline.errors.ProviderError subclasses. Made by pipeline.providers.chat_model.
    """

    model: str

    def stream(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Iterator[ChatDelta]: ...

    def chat(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> ChatReply: ...

    def structured(self, messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any], name: str,
                   **opts: Any) -> tuple[dict[str, Any] | None, ChatReply]: ...

    def describe_image(self, prompt: str, path: Path) -> ChatReply: ...

    def close(self) -> None: ...
