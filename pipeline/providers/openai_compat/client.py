"""OpenAI-compatible chat client: chat, SSE streaming and JSON-schema output against {base_url}/chat/completions.

Blocking httpx I/O over _wire; statuses and httpx failures become our errors through providers.http.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from ...config import OpenAISettings
from ...errors import ProviderError
from .. import http
from ..chat import ChatDelta, ChatReply
from . import _wire

__all__ = ["OpenAIChatClient", "check_response"]

ENDPOINT = "/chat/completions"


def check_response(resp: httpx.Response, endpoint: str) -> None:
    """Raises our ProviderError subclass for a non-2xx response (its body must have been read)."""
    if not 200 <= resp.status_code < 300:
        raise http.error_for_status(resp.status_code, resp.content, endpoint, provider=_wire.PROVIDER,
                                    retry_after=resp.headers.get("retry-after"), now=time.time())


def httpx_error(exc: httpx.HTTPError, endpoint: str, settings: OpenAISettings) -> ProviderError:
    return http.map_httpx_error(exc, endpoint, settings.timeout_s, provider=_wire.PROVIDER, ca_hint=_wire.CA_HINT)


class OpenAIChatClient:
    """Blocking chat client; opts are chat_body's (functions, function_call, max_tokens, temperature, ...)."""

    def __init__(self, settings: OpenAISettings) -> None:
        _wire.check_settings(settings)
        self.settings = settings
        ctx = http.tls_context(settings.ca_bundle_file, label="[openai] ca_bundle_file")
        self._http = http.sync_client(ctx, settings.timeout_s)

    def __enter__(self) -> OpenAIChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def chat(self, messages: Sequence[Mapping[str, Any]], model: str, **opts: Any) -> ChatReply:
        """One completion. Raises ProviderError subclasses (BadRequestError for 4xx parameters)."""
        try:
            resp = self._http.post(self.settings.base_url + ENDPOINT, headers=_wire.headers(self.settings),
                                   json=_wire.chat_body(messages, model, **opts))
        except httpx.HTTPError as e:
            raise httpx_error(e, ENDPOINT, self.settings) from None
        check_response(resp, ENDPOINT)
        return _wire.parse_chat(resp.content, ENDPOINT)

    def stream(self, messages: Sequence[Mapping[str, Any]], model: str, **opts: Any) -> Iterator[ChatDelta]:
        """SSE deltas; a connection cut before the finish raises NetworkError."""
        body = _wire.chat_body(messages, model, stream=True, **opts)
        request = self._http.build_request("POST", self.settings.base_url + ENDPOINT,
                                           headers=_wire.headers(self.settings, stream=True), json=body)
        try:
            resp = self._http.send(request, stream=True)
        except httpx.HTTPError as e:
            raise httpx_error(e, ENDPOINT, self.settings) from None
        decoder = _wire.StreamDecoder(ENDPOINT)
        try:
            if not 200 <= resp.status_code < 300:
                resp.read()
                check_response(resp, ENDPOINT)
            kind = resp.headers.get("content-type", "")
            if not kind.startswith("text/event-stream"):
                raise _wire.bad_response(f"expected text/event-stream, got {kind!r}", ENDPOINT, resp.status_code)
            for line in resp.iter_lines():
                delta = decoder.feed(line)
                if delta is not None:
                    yield delta
                if decoder.done:
                    break
        except httpx.HTTPError as e:
            raise http.stream_error(e, ENDPOINT, self.settings.timeout_s, provider=_wire.PROVIDER,
                                    ca_hint=_wire.CA_HINT) from None
        finally:
            resp.close()
        decoder.close()

    def chat_json(self, messages: Sequence[Mapping[str, Any]], model: str, schema: Mapping[str, Any],
                  name: str, **opts: Any) -> tuple[dict[str, Any] | None, ChatReply]:
        """A JSON object matching `schema` via response_format json_schema (LiteLLM turns it into GigaChat's
        forced function call), and the reply; None when the reply holds no JSON object (see finish_reason)."""
        fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}
        reply = self.chat(messages, model, response_format=fmt, **opts)
        call = reply.function_call
        if call is not None and call.name == name:  # a server that answers with the call
            return call.arguments, reply
        try:
            data = json.loads(reply.content)
        except ValueError:
            data = None
        return (data if isinstance(data, dict) else None), reply
