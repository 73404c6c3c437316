"""OpenAI-compatible wire format: request bodies and headers, response and SSE parsing into our chat records.

Pure and sync: no sockets, files or clocks; client.py and provider.py do the I/O around it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ...config import OpenAISettings
from ...errors import BadResponseError, ConfigError, NetworkError
from .. import http
from ..chat import REFUSED, ChatDelta, ChatReply, FunctionCall, Usage
from ..embeddings_json import decode_embeddings

__all__ = ["StreamDecoder", "chat_body", "check_settings", "headers", "parse_chat", "parse_embeddings",
           "to_openai_messages"]

PROVIDER = "openai"
CA_HINT = "set [openai] ca_bundle_file"
_FINISH = {"tool_calls": "function_call", "content_filter": REFUSED}  # OpenAI's names for GigaChat's


def bad_response(message: str, endpoint: str, status: int = 200) -> BadResponseError:
    return BadResponseError(message, provider=PROVIDER, endpoint=endpoint, status=status)


def check_settings(settings: OpenAISettings) -> None:
    """Raises ConfigError when [openai] names no usable server."""
    if not settings.base_url:
        raise ConfigError("provider 'openai' needs a server: set [openai] base_url or PIPELINE_OPENAI_BASE_URL "
                          "(e.g. http://127.0.0.1:4000 for a LiteLLM proxy)")
    if not settings.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"[openai] base_url {settings.base_url!r} must start with http:// or https://")


def headers(settings: OpenAISettings, *, stream: bool = False) -> dict[str, str]:
    out = {"Accept": "text/event-stream" if stream else "application/json"}
    if settings.api_key:
        out["Authorization"] = f"Bearer {settings.api_key.get()}"
    return out


def _loads(body: bytes, endpoint: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as e:
        raise bad_response(f"invalid JSON ({e}; {len(body)} bytes)", endpoint) from None


# ---------------------------------------------------------------- embeddings


def parse_embeddings(body: bytes, n: int, dimension: int, endpoint: str = "/embeddings") -> np.ndarray:
    """(n, dimension) float32 in input order; BadResponseError on a wrong count, index or dimension."""
    fast = decode_embeddings(body)  # None: not the usual shape, or off somewhere; the full parse says what
    data = _loads(body, endpoint) if fast is None else fast[0]
    try:
        ranked = sorted(enumerate(data["data"]), key=lambda pair: int(pair[1].get("index", 0)))
        rows = [it["embedding"] for _, it in ranked]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise bad_response(f"unexpected response shape: {type(e).__name__}: {e}", endpoint) from None
    if len(rows) != n:
        raise bad_response(f"{len(rows)} vectors for {n} texts", endpoint)
    try:
        matrix = np.array(rows, dtype=np.float32) if fast is None else fast[1][[i for i, _ in ranked]]
    except (TypeError, ValueError) as e:
        raise bad_response(f"an embedding is not a list of numbers: {e}", endpoint) from None
    if matrix.ndim != 2 or matrix.shape[1] != dimension:
        got = matrix.shape[1] if matrix.ndim == 2 else "ragged"
        raise bad_response(f"{got}-dimensional vectors, the registry says {dimension}", endpoint)
    if not np.isfinite(matrix).all():
        raise bad_response("an embedding holds NaN or infinite values", endpoint)
    return matrix


# ---------------------------------------------------------------- chat requests


def to_openai_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """GigaChat-style messages (assistant function_call, role function) in OpenAI's tools shape.

    Each function result answers the call just before it; ids are the server's when it gave one.
    """
    out: list[dict[str, Any]] = []
    last_id = ""
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "assistant" and m.get("function_call"):
            fc = m["function_call"]
            last_id = str(m.get("call_id") or f"call_{i}")
            out.append({"role": "assistant", "content": m.get("content") or None, "tool_calls": [
                {"id": last_id, "type": "function",
                 "function": {"name": fc["name"], "arguments": json.dumps(fc.get("arguments") or {},
                                                                           ensure_ascii=False)}}]})
        elif role == "function":
            out.append({"role": "tool", "tool_call_id": str(m.get("call_id") or last_id),
                        "content": m.get("content") or ""})
        else:
            msg = {"role": role, "content": m.get("content") or ""}
            if m.get("images"):
                msg["content"] = [{"type": "text", "text": msg["content"]},
                                  *({"type": "image_url", "image_url": {"url": url}} for url in m["images"])]
            out.append(msg)
    return out


def _tool_choice(function_call: str | Mapping[str, Any] | None) -> Any:
    if function_call is None or isinstance(function_call, str):
        return function_call
    return {"type": "function", "function": {"name": function_call["name"]}}


def chat_body(messages: Sequence[Mapping[str, Any]], model: str, *,
              functions: Sequence[Mapping[str, Any]] | None = None,
              function_call: str | Mapping[str, Any] | None = None, max_tokens: int | None = None,
              temperature: float | None = None, response_format: Mapping[str, Any] | None = None,
              stream: bool = False) -> dict[str, Any]:
    """A /chat/completions body: functions become tools, function_call becomes tool_choice."""
    body: dict[str, Any] = {"model": model, "messages": to_openai_messages(messages)}
    if functions:
        body["tools"] = [{"type": "function", "function": dict(f)} for f in functions]
        if function_call is not None:
            body["tool_choice"] = _tool_choice(function_call)
    for key, value in (("max_tokens", max_tokens), ("temperature", temperature),
                       ("response_format", response_format)):
        if value is not None:
            body[key] = value
    if stream:
        body["stream"] = True
    return body


# ---------------------------------------------------------------- chat responses


def _finish(reason: str | None) -> str | None:
    return _FINISH.get(reason or "", reason)


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, Mapping) or not raw:
        return None
    return Usage(*(int(v) if isinstance(v := raw.get(k), int) and not isinstance(v, bool) else 0
                   for k in ("prompt_tokens", "completion_tokens", "total_tokens")))


def _tool_call(raw: Mapping[str, Any], endpoint: str) -> FunctionCall:
    fn = raw.get("function") or {}
    args: Any = fn.get("arguments") or {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise bad_response(f"tool call arguments are not JSON: {args[:100]!r}", endpoint) from None
    if not isinstance(args, dict):
        raise bad_response("tool call arguments are not a JSON object", endpoint)
    return FunctionCall(name=str(fn.get("name") or ""), arguments=args, call_id=str(raw.get("id") or ""))


def parse_chat(body: bytes, endpoint: str = "/chat/completions") -> ChatReply:
    """The first choice; finish_reason tool_calls reads as function_call, content_filter as blacklist."""
    data = _loads(body, endpoint)
    try:
        choice = data["choices"][0]
        msg = choice.get("message") or {}
        calls = msg.get("tool_calls") or []
        return ChatReply(content=str(msg.get("content") or ""), finish_reason=_finish(choice.get("finish_reason")),
                         function_call=_tool_call(calls[0], endpoint) if calls else None,
                         usage=_usage(data.get("usage")), model=str(data.get("model") or ""))
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise bad_response(f"unexpected response shape: {type(e).__name__}: {e}", endpoint) from None


class StreamDecoder:
    """OpenAI SSE lines -> ChatDeltas; tool-call fragments are joined and handed out with the finish."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.done = False
        self.finished = False
        self._call: dict[str, Any] = {}

    def feed(self, line: str) -> ChatDelta | None:
        payload = http.sse_data(line)
        if payload is None or self.done:
            return None
        if payload == "[DONE]":
            self.done = True
            return None
        data = _loads(payload.encode(), self.endpoint)
        if isinstance(data, dict) and "error" in data and "choices" not in data:
            inner = data["error"] if isinstance(data["error"], dict) else {"message": str(data["error"])}
            code = str(inner.get("code") or "")
            status = int(code) if code.isdigit() and 400 <= int(code) < 600 else 500  # LiteLLM sends "500"
            raise http.error_for_status(status, json.dumps({"error": inner}).encode(), self.endpoint,
                                        provider=PROVIDER)
        choices = data.get("choices") or []
        if not choices:  # a usage-only chunk
            usage = _usage(data.get("usage"))
            return ChatDelta(usage=usage) if usage else None
        choice = choices[0]
        delta = choice.get("delta") or {}
        for frag in delta.get("tool_calls") or []:
            if int(frag.get("index") or 0) != 0:
                continue  # one call per turn, as GigaChat does
            fn = frag.get("function") or {}
            self._call["id"] = self._call.get("id") or frag.get("id") or ""
            self._call["name"] = self._call.get("name", "") + (fn.get("name") or "")
            self._call["arguments"] = self._call.get("arguments", "") + (fn.get("arguments") or "")
        reason = _finish(choice.get("finish_reason"))
        call = None
        if reason is not None:
            self.finished = True
            if self._call:
                call = _tool_call({"id": self._call["id"], "function": self._call}, self.endpoint)
        return ChatDelta(content=str(delta.get("content") or ""), finish_reason=reason, function_call=call,
                         usage=_usage(data.get("usage")))

    def close(self) -> None:
        if not self.done and not self.finished:
            raise NetworkError("stream ended before completion (no finish_reason, no [DONE])", provider=PROVIDER,
                               endpoint=self.endpoint, status=200)
