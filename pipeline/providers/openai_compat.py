"""OpenAI-compatible provider: embeddings and chat from any server speaking OpenAI's /v1 API.

A LiteLLM proxy (its `model_list` names are our model names), vLLM or Ollama; plain httpx, no openai SDK.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import certifi
import httpx
import numpy as np

from ..config import OpenAISettings
from ..errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    NetworkError,
    ProviderError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
)
from ..records import ModelSpec
from .embeddings_json import LARGE_BODY_BYTES, decode_embeddings

__all__ = [
    "OpenAIChatClient",
    "OpenAIChunk",
    "OpenAIEmbeddingProvider",
    "OpenAIReply",
    "ToolCall",
    "to_openai_messages",
]

PROVIDER = "openai"
REFUSAL_REASONS = frozenset({"content_filter", "blacklist"})


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass(frozen=True)
class OpenAIReply:
    """The first choice of a chat completion; finish_reason "tool_calls" is mapped to "function_call"."""

    content: str
    finish_reason: str | None = None
    tool_call: ToolCall | None = None
    usage: Mapping[str, int] = field(default_factory=dict)
    model: str = ""


@dataclass(frozen=True)
class OpenAIChunk:
    """One streamed piece; the tool call, assembled from its fragments, comes with the finishing chunk."""

    content: str = ""
    finish_reason: str | None = None
    tool_call: ToolCall | None = None
    usage: Mapping[str, int] | None = None


def _err(cls: type[ProviderError], message: str, endpoint: str, status: int | None = None,
         **kw: Any) -> ProviderError:
    return cls(message, provider=PROVIDER, endpoint=endpoint, status=status, **kw)


def _server_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"].strip()
        for key in ("message", "detail", "error"):
            if isinstance(data.get(key), str) and data[key].strip():
                return str(data[key]).strip()
    text = body.decode("utf-8", "replace").strip()
    return " ".join(text.split())[:300] or "no message"


def error_for_status(status: int, body: bytes, endpoint: str, retry_after: str | None = None) -> ProviderError:
    """Our exception for a non-2xx answer, as for GigaChat: 401/403 auth, 429, 413, 400/404/422, 5xx."""
    message = _server_message(body)
    if status in (401, 403):
        return _err(AuthError, message, endpoint, status)
    if status == 429:
        try:
            wait = float(retry_after) if retry_after else None
        except ValueError:
            wait = None
        return _err(RateLimitError, message, endpoint, status, retry_after=wait)
    if status == 413:
        return _err(RequestTooLargeError, message, endpoint, status)
    if status in (400, 404, 422):
        return _err(BadRequestError, message, endpoint, status)
    if status >= 500:
        return _err(ServerError, message, endpoint, status)
    return _err(ProviderError, message, endpoint, status, retryable=False)


def _map_httpx_error(exc: httpx.HTTPError, endpoint: str, timeout_s: float) -> ProviderError:
    if isinstance(exc, httpx.TimeoutException):
        return _err(NetworkError, f"no answer within {timeout_s:g} s ({type(exc).__name__})", endpoint)
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return _err(NetworkError, f"TLS certificate verification failed ({text}); set [openai] ca_bundle_file",
                    endpoint, retryable=False)
    if isinstance(exc, httpx.TransportError):
        return _err(NetworkError, f"{type(exc).__name__}: {text}", endpoint)
    return _err(ProviderError, f"{type(exc).__name__}: {text}", endpoint, retryable=False)


def _ssl_context(settings: OpenAISettings) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=settings.ca_bundle_file or certifi.where())
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"[openai] ca_bundle_file {settings.ca_bundle_file}: cannot load it: {e}") from None


def _check_settings(settings: OpenAISettings) -> None:
    if not settings.base_url:
        raise ConfigError("provider 'openai' needs a server: set [openai] base_url or PIPELINE_OPENAI_BASE_URL "
                          "(e.g. http://127.0.0.1:4000 for a LiteLLM proxy)")
    if not settings.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"[openai] base_url {settings.base_url!r} must start with http:// or https://")


def _headers(settings: OpenAISettings, *, stream: bool = False) -> dict[str, str]:
    headers = {"Accept": "text/event-stream" if stream else "application/json"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key.get()}"
    return headers


def _loads(body: bytes, endpoint: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as e:
        raise _err(BadResponseError, f"invalid JSON ({e}; {len(body)} bytes)", endpoint, 200) from None


# ---------------------------------------------------------------- embeddings


def parse_embeddings(body: bytes, n: int, dimension: int, endpoint: str = "/embeddings") -> np.ndarray:
    """(n, dimension) float32 in input order; BadResponseError on a wrong count, index or dimension."""
    fast = decode_embeddings(body)  # None: not the usual shape, or off somewhere; the full parse says what
    data = _loads(body, endpoint) if fast is None else fast[0]
    try:
        ranked = sorted(enumerate(data["data"]), key=lambda pair: int(pair[1].get("index", 0)))
        rows = [it["embedding"] for _, it in ranked]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _err(BadResponseError, f"unexpected response shape: {type(e).__name__}: {e}", endpoint, 200) from None
    if len(rows) != n:
        raise _err(BadResponseError, f"{len(rows)} vectors for {n} texts", endpoint, 200)
    try:
        matrix = np.array(rows, dtype=np.float32) if fast is None else fast[1][[i for i, _ in ranked]]
    except (TypeError, ValueError) as e:
        raise _err(BadResponseError, f"an embedding is not a list of numbers: {e}", endpoint, 200) from None
    if matrix.ndim != 2 or matrix.shape[1] != dimension:
        got = matrix.shape[1] if matrix.ndim == 2 else "ragged"
        raise _err(BadResponseError, f"{got}-dimensional vectors, the registry says {dimension}", endpoint, 200)
    if not np.isfinite(matrix).all():
        raise _err(BadResponseError, "an embedding holds NaN or infinite values", endpoint, 200)
    return matrix


class OpenAIEmbeddingProvider:
    """EmbeddingProvider over POST {base_url}/embeddings; the registry name is the server's model name."""

    name = PROVIDER

    def __init__(self, spec: ModelSpec, settings: OpenAISettings) -> None:
        _check_settings(settings)
        self.spec = spec
        self.settings = settings
        self._ssl = _ssl_context(settings)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAIEmbeddingProvider(model={self.spec.name!r}, base_url={self.settings.base_url!r})"

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # connections belong to one event loop
            self._client = httpx.AsyncClient(verify=self._ssl, timeout=self.settings.timeout_s)
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
            resp = await self._http().post(self.settings.base_url + endpoint, headers=_headers(self.settings),
                                           json={"model": self.spec.name, "input": inputs})
        except httpx.HTTPError as e:
            raise _map_httpx_error(e, endpoint, self.settings.timeout_s) from None
        if not 200 <= resp.status_code < 300:
            raise error_for_status(resp.status_code, resp.content, endpoint, resp.headers.get("retry-after"))
        if on_received is not None:
            on_received()
        if len(resp.content) > LARGE_BODY_BYTES:  # decoding a big body would stall the event loop
            return await asyncio.to_thread(parse_embeddings, resp.content, len(texts), self.spec.dimension, endpoint)
        return parse_embeddings(resp.content, len(texts), self.spec.dimension, endpoint)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


# ---------------------------------------------------------------- chat


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


def _tools(functions: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]] | None:
    return [{"type": "function", "function": dict(f)} for f in functions] if functions else None


def _tool_choice(function_call: str | Mapping[str, Any] | None) -> Any:
    if function_call is None or isinstance(function_call, str):
        return function_call
    return {"type": "function", "function": {"name": function_call["name"]}}


def _finish(reason: str | None) -> str | None:
    return "function_call" if reason == "tool_calls" else reason


def _tool_call(raw: Mapping[str, Any], endpoint: str) -> ToolCall:
    fn = raw.get("function") or {}
    args: Any = fn.get("arguments") or {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise _err(BadResponseError, f"tool call arguments are not JSON: {args[:100]!r}", endpoint, 200) from None
    if not isinstance(args, dict):
        raise _err(BadResponseError, "tool call arguments are not a JSON object", endpoint, 200)
    return ToolCall(name=str(fn.get("name") or ""), arguments=args, id=str(raw.get("id") or ""))


def parse_chat(body: bytes, endpoint: str = "/chat/completions") -> OpenAIReply:
    data = _loads(body, endpoint)
    try:
        choice = data["choices"][0]
        msg = choice.get("message") or {}
        calls = msg.get("tool_calls") or []
        return OpenAIReply(content=str(msg.get("content") or ""), finish_reason=_finish(choice.get("finish_reason")),
                           tool_call=_tool_call(calls[0], endpoint) if calls else None,
                           usage=dict(data.get("usage") or {}), model=str(data.get("model") or ""))
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise _err(BadResponseError, f"unexpected response shape: {type(e).__name__}: {e}", endpoint, 200) from None


class _StreamDecoder:
    """OpenAI SSE lines -> OpenAIChunks; tool-call fragments are joined and handed out with the finish."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.done = False
        self.finished = False
        self._call: dict[str, Any] = {}

    def feed(self, line: str) -> OpenAIChunk | None:
        line = line.strip()
        if not line.startswith("data:") or self.done:
            return None
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return None
        data = _loads(payload.encode(), self.endpoint)
        if isinstance(data, dict) and "error" in data and "choices" not in data:
            inner = data["error"] if isinstance(data["error"], dict) else {"message": str(data["error"])}
            code = str(inner.get("code") or "")
            status = int(code) if code.isdigit() and 400 <= int(code) < 600 else 500  # LiteLLM sends "500"
            raise error_for_status(status, json.dumps({"error": inner}).encode(), self.endpoint)
        choices = data.get("choices") or []
        if not choices:  # a usage-only chunk
            return OpenAIChunk(usage=data.get("usage")) if data.get("usage") else None
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
        return OpenAIChunk(content=str(delta.get("content") or ""), finish_reason=reason, tool_call=call,
                           usage=data.get("usage"))

    def close(self) -> None:
        if not self.done and not self.finished:
            raise _err(NetworkError, "stream ended before completion (no finish_reason, no [DONE])",
                       self.endpoint, 200)


class OpenAIChatClient:
    """Blocking chat client: chat, stream (SSE) and JSON-schema output against {base_url}/chat/completions."""

    def __init__(self, settings: OpenAISettings) -> None:
        _check_settings(settings)
        self.settings = settings
        self._http = httpx.Client(verify=_ssl_context(settings), timeout=settings.timeout_s)

    def __enter__(self) -> OpenAIChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _body(self, messages: Sequence[Mapping[str, Any]], model: str, *,
              functions: Sequence[Mapping[str, Any]] | None = None,
              function_call: str | Mapping[str, Any] | None = None, max_tokens: int | None = None,
              temperature: float | None = None, response_format: Mapping[str, Any] | None = None,
              stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": to_openai_messages(messages)}
        tools = _tools(functions)
        if tools:
            body["tools"] = tools
            if function_call is not None:
                body["tool_choice"] = _tool_choice(function_call)
        for key, value in (("max_tokens", max_tokens), ("temperature", temperature),
                           ("response_format", response_format)):
            if value is not None:
                body[key] = value
        if stream:
            body["stream"] = True
        return body

    def chat(self, messages: Sequence[Mapping[str, Any]], model: str, **opts: Any) -> OpenAIReply:
        """One completion. Raises ProviderError subclasses (BadRequestError for 4xx parameters)."""
        endpoint = "/chat/completions"
        try:
            resp = self._http.post(self.settings.base_url + endpoint, headers=_headers(self.settings),
                                   json=self._body(messages, model, **opts))
        except httpx.HTTPError as e:
            raise _map_httpx_error(e, endpoint, self.settings.timeout_s) from None
        if not 200 <= resp.status_code < 300:
            raise error_for_status(resp.status_code, resp.content, endpoint, resp.headers.get("retry-after"))
        return parse_chat(resp.content, endpoint)

    def stream(self, messages: Sequence[Mapping[str, Any]], model: str, **opts: Any) -> Iterator[OpenAIChunk]:
        """SSE chunks; a connection cut before the finish raises NetworkError."""
        endpoint = "/chat/completions"
        body = self._body(messages, model, stream=True, **opts)
        request = self._http.build_request("POST", self.settings.base_url + endpoint,
                                           headers=_headers(self.settings, stream=True), json=body)
        try:
            resp = self._http.send(request, stream=True)
        except httpx.HTTPError as e:
            raise _map_httpx_error(e, endpoint, self.settings.timeout_s) from None
        decoder = _StreamDecoder(endpoint)
        try:
            if not 200 <= resp.status_code < 300:
                resp.read()
                raise error_for_status(resp.status_code, resp.content, endpoint, resp.headers.get("retry-after"))
            kind = resp.headers.get("content-type", "")
            if not kind.startswith("text/event-stream"):
                raise _err(BadResponseError, f"expected text/event-stream, got {kind!r}", endpoint, resp.status_code)
            for line in resp.iter_lines():
                chunk = decoder.feed(line)
                if chunk is not None:
                    yield chunk
                if decoder.done:
                    break
        except httpx.HTTPError as e:
            err = _map_httpx_error(e, endpoint, self.settings.timeout_s)
            if isinstance(err, NetworkError) and not isinstance(e, httpx.TimeoutException):
                err = _err(NetworkError, f"stream ended before completion ({err.server_message})", endpoint)
            raise err from None
        finally:
            resp.close()
        decoder.close()

    def chat_json(self, messages: Sequence[Mapping[str, Any]], model: str, schema: Mapping[str, Any],
                  name: str, **opts: Any) -> tuple[dict[str, Any] | None, OpenAIReply]:
        """A JSON object matching `schema` via response_format json_schema (LiteLLM turns it into GigaChat's
        forced function call), and the reply; None when the reply holds no JSON object (see finish_reason)."""
        fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}
        reply = self.chat(messages, model, response_format=fmt, **opts)
        if reply.tool_call is not None and reply.tool_call.name == name:  # a server that answers with the call
            return reply.tool_call.arguments, reply
        try:
            data = json.loads(reply.content)
        except ValueError:
            data = None
        return (data if isinstance(data, dict) else None), reply
