"""Chat backends: one blocking chat interface over the GigaChat client and the OpenAI-compatible client.

Adapters only: messages stay GigaChat-shaped (function_call, role function); each backend maps them to its wire.
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import BadRequestError, ConfigError
from ..records import ModelSpec

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "AUTO_CHAT_MODEL",
    "ChatBackend",
    "Delta",
    "FunctionCall",
    "Reply",
    "chat_backend",
    "resolve_chat_model",
]

AUTO_CHAT_MODEL = "GigaChat-2-Lite"  # what chat_model "auto" picks when GigaChat credentials are set
MAX_IMAGE_BYTES = 15 * 1024 * 1024  # GigaChat's limit for one image (gigachat-api.md §8)
_REFUSALS = {"content_filter": "blacklist"}  # OpenAI's name for GigaChat's refusal


@dataclass(frozen=True)
class FunctionCall:
    name: str
    arguments: dict[str, Any]
    call_id: str = ""  # the OpenAI tool call id; "" for GigaChat
    functions_state_id: str = ""  # GigaChat's, echoed back on the assistant message

    def message(self) -> dict[str, Any]:
        """The assistant turn that made this call, to append to the conversation."""
        out: dict[str, Any] = {"role": "assistant", "content": "",
                               "function_call": {"name": self.name, "arguments": self.arguments}}
        if self.call_id:
            out["call_id"] = self.call_id
        if self.functions_state_id:
            out["functions_state_id"] = self.functions_state_id
        return out


@dataclass(frozen=True)
class Delta:
    content: str = ""
    finish_reason: str | None = None
    function_call: FunctionCall | None = None
    usage: Mapping[str, int] | None = None


@dataclass(frozen=True)
class Reply:
    content: str
    finish_reason: str | None = None
    function_call: FunctionCall | None = None
    usage: Mapping[str, int] = field(default_factory=dict)


class ChatBackend(Protocol):
    """A chat model behind some API: stream a turn, complete a turn, or answer in a JSON schema."""

    model: str

    def stream(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Iterator[Delta]: ...

    def chat(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Reply: ...

    def structured(self, messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any], name: str,
                   **opts: Any) -> tuple[dict[str, Any] | None, Reply]: ...

    def describe_image(self, prompt: str, path: Path) -> Reply: ...

    def close(self) -> None: ...


def _reason(reason: str | None) -> str | None:
    return _REFUSALS.get(reason or "", reason)


def _usage(usage: Any) -> dict[str, int]:
    if usage is None:
        return {}
    if isinstance(usage, Mapping):
        return {k: int(v) for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
    return {k: int(getattr(usage, k)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _opts(opts: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


class GigaChatBackend:
    """Over GigaChatClient (sync). Structured output is a forced function call, as litellm emulates it."""

    def __init__(self, spec: ModelSpec, config: Config) -> None:
        from ..providers.gigachat import GigaChatClient

        self.model = spec.name
        self._client = GigaChatClient(config.gigachat)

    @staticmethod
    def _call(fc: Any, state_id: str | None) -> FunctionCall | None:
        if fc is None:
            return None
        return FunctionCall(fc.name, dict(fc.arguments), functions_state_id=state_id or "")

    def stream(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Iterator[Delta]:
        for d in self._client.stream(list(messages), model=self.model, **_opts(opts)):
            yield Delta(d.content, _reason(d.finish_reason), self._call(d.function_call, d.functions_state_id),
                        _usage(d.usage) if d.usage is not None else None)

    def chat(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Reply:
        r = self._client.chat(list(messages), model=self.model, **_opts(opts))
        return Reply(r.content, _reason(r.finish_reason), self._call(r.function_call, r.functions_state_id),
                     _usage(r.usage))

    def structured(self, messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any], name: str,
                   **opts: Any) -> tuple[dict[str, Any] | None, Reply]:
        # chat_structured() returns only the arguments; chat() with the same forced call keeps finish_reason,
        # so a refusal (blacklist) or a cut (length) can be told from a malformed reply.
        fn = {"name": name, "description": f"Output structured response: {name}", "parameters": dict(schema)}
        reply = self.chat(messages, functions=[fn], function_call={"name": name}, **opts)
        fc = reply.function_call
        return (fc.arguments if fc is not None and fc.name == name else None), reply

    def describe_image(self, prompt: str, path: Path) -> Reply:
        from ..providers.gigachat import Image, Message

        message = Message(role="user", content=prompt, images=[Image(path=str(path))])
        return self.chat([message])

    def close(self) -> None:
        self._client.close()


class OpenAIBackend:
    """Over OpenAIChatClient: tools for functions, response_format json_schema for structured output."""

    def __init__(self, spec: ModelSpec, config: Config) -> None:
        from ..providers.openai_compat import OpenAIChatClient

        self.model = spec.name
        self._client = OpenAIChatClient(config.openai)

    @staticmethod
    def _call(tc: Any) -> FunctionCall | None:
        return None if tc is None else FunctionCall(tc.name, dict(tc.arguments), call_id=tc.id)

    def stream(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Iterator[Delta]:
        for c in self._client.stream(messages, self.model, **_opts(opts)):
            yield Delta(c.content, _reason(c.finish_reason), self._call(c.tool_call),
                        _usage(c.usage) if c.usage else None)

    def chat(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Reply:
        r = self._client.chat(messages, self.model, **_opts(opts))
        return Reply(r.content, _reason(r.finish_reason), self._call(r.tool_call), _usage(r.usage))

    def structured(self, messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any], name: str,
                   **opts: Any) -> tuple[dict[str, Any] | None, Reply]:
        data, r = self._client.chat_json(messages, self.model, schema, name, **_opts(opts))
        return data, Reply(r.content, _reason(r.finish_reason), self._call(r.tool_call), _usage(r.usage))

    def describe_image(self, prompt: str, path: Path) -> Reply:
        data = path.read_bytes()
        if len(data) > MAX_IMAGE_BYTES:  # LiteLLM would drop a failed upload and ask about no image at all
            raise BadRequestError(f"image of {len(data) / 1e6:.1f} MB exceeds the 15 MB limit per image",
                                  provider="openai")
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        return self.chat([{"role": "user", "content": prompt, "images": [url]}])

    def close(self) -> None:
        self._client.close()


def resolve_chat_model(config: Config, name: str | None = None) -> ModelSpec | None:
    """The chat model to answer with, or None for the extractive answer.

    `name` (the --chat-model option) wins over [ask] chat_model; "" or "none" mean extractive; "auto" means
    GigaChat-2-Lite when GigaChat credentials are set, else extractive. Raises ConfigError for an unknown
    or non-chat model, or a GigaChat model without credentials.
    """
    chosen = (config.ask.chat_model if name is None else name).strip()
    if chosen.lower() in ("", "none"):
        return None
    if chosen == "auto":
        if not config.gigachat.has_auth:
            return None
        chosen = AUTO_CHAT_MODEL
    spec = config.registry.get(chosen)
    if spec is None or spec.kind != "chat":
        known = ", ".join(sorted(n for n, s in config.registry.items() if s.kind == "chat"))
        what = "unknown model" if spec is None else "not a chat model:"
        raise ConfigError(f"--chat-model: {what} {chosen!r}; chat models: {known}")
    if spec.provider == "gigachat" and not config.gigachat.has_auth:
        raise ConfigError(f"chat model {chosen} needs GigaChat credentials: set GIGACHAT_CREDENTIALS (or "
                          "GIGACHAT_ACCESS_TOKEN), or ask without --chat-model for the offline extractive answer")
    return spec


def chat_backend(spec: ModelSpec, config: Config) -> ChatBackend:
    """A backend for a chat model of the registry. Raises ConfigError for a provider without chat."""
    if spec.provider == "gigachat":
        return GigaChatBackend(spec, config)
    if spec.provider == "openai":
        return OpenAIBackend(spec, config)
    raise ConfigError(f"chat model {spec.name}: provider {spec.provider!r} has no chat API here "
                      "(use 'gigachat' or 'openai')")
