"""The shared provider HTTP boundary: status mapping, server messages, Retry-After, httpx failures.

Pure, parametrised tests (no sockets); the OpenAI-compatible provider's use of it runs against a real server.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import httpx
import pytest

from pipeline.config import OpenAISettings
from pipeline.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    NetworkError,
    ProviderError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
)
from pipeline.providers import http
from pipeline.providers.gigachat import GigaChatClient
from pipeline.providers.openai_compat import OpenAIChatClient, OpenAIEmbeddingProvider
from pipeline.records import ModelSpec

# ---------------------------------------------------------------- status mapping


@pytest.mark.parametrize(("status", "cls", "retryable"), [
    (400, BadRequestError, False), (401, AuthError, False), (403, AuthError, False),
    (404, BadRequestError, False), (413, RequestTooLargeError, False), (422, BadRequestError, False),
    (429, RateLimitError, True), (500, ServerError, True), (502, ServerError, True), (503, ServerError, True),
    (402, ProviderError, False), (409, ProviderError, False),
])
def test_error_for_status_maps_and_names_everything(status: int, cls: type, retryable: bool) -> None:
    err = http.error_for_status(status, b'{"status": %d, "message": "No such model"}\n' % status, "/models/X",
                                provider="gigachat")
    assert type(err) is cls
    assert err.retryable is retryable
    assert err.status == status and err.endpoint == "/models/X" and err.provider == "gigachat"
    assert f"HTTP {status}" in str(err) and "/models/X" in str(err) and "No such model" in str(err)


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"status": 422, "message": "Invalid params: temperature must be in range (0, +inf)"}',
     "Invalid params: temperature must be in range (0, +inf)"),
    (b'{"code": 6, "message": "credentials doesn\'t match db data"}', "credentials doesn't match db data"),
    (b"<html>\n  Bad   gateway </html>", "<html> Bad gateway </html>"),
    (b"", "Service Unavailable"),
])
def test_server_message(body: bytes, expected: str) -> None:
    assert http.server_message(503, body) == expected


def test_oauth_400_is_an_auth_error() -> None:
    err = http.error_for_status(400, b'{"code": 5, "message": "scope is empty"}', "/api/v2/oauth",
                               provider="gigachat", oauth=True)
    assert isinstance(err, AuthError) and "scope is empty" in str(err)


@pytest.mark.parametrize(("header", "expected"), [
    ("2", 2.0), ("0.25", 0.25), ("-3", 0.0), (None, None), ("", None), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
])
def test_retry_after(header: str | None, expected: float | None) -> None:
    now = 1445412480.0  # 07:28:00 that day
    assert http.parse_retry_after(header, now=now) == expected
    err = http.error_for_status(429, b"{}", "/embeddings", provider="gigachat", retry_after=header, now=now)
    assert isinstance(err, RateLimitError) and err.retry_after == expected


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"error": {"message": "Incorrect API key", "type": "auth"}}', "Incorrect API key"),
    (b'{"detail": "Not Found"}', "Not Found"),
    (b'{"error": "rate limited"}', "rate limited"),
])
def test_server_message_openai_shapes(body: bytes, expected: str) -> None:
    assert http.server_message(400, body) == expected


# ---------------------------------------------------------------- httpx errors


REQ = httpx.Request("POST", "https://giga.test/api/v1/embeddings")


@pytest.mark.parametrize(("exc", "cls", "retryable", "fragment"), [
    (httpx.ReadTimeout("t", request=REQ), NetworkError, True, "no answer within 30 s"),
    (httpx.ConnectError("refused", request=REQ), NetworkError, True, "ConnectError: refused"),
    (httpx.RemoteProtocolError("peer closed", request=REQ), NetworkError, True, "peer closed"),
    (httpx.ReadError("reset", request=REQ), NetworkError, True, "ReadError"),
    (httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", request=REQ),
     NetworkError, False, "certificate verification failed"),
    (httpx.DecodingError("bad gzip", request=REQ), BadResponseError, True, "undecodable"),
    (httpx.TooManyRedirects("loop", request=REQ), ProviderError, False, "TooManyRedirects"),
])
def test_map_httpx_error(exc: httpx.HTTPError, cls: type, retryable: bool, fragment: str) -> None:
    err = http.map_httpx_error(exc, "/embeddings", 30.0, provider="gigachat", ca_hint="set GIGACHAT_CA_BUNDLE_FILE")
    assert type(err) is cls and err.retryable is retryable and fragment in str(err)
    assert "/embeddings" in str(err)


# ---------------------------------------------------------------- both providers over a real socket


def _in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


def test_http_date_retry_after_reaches_the_openai_provider(stub: Any) -> None:
    stub.routes[("POST", "/v1/embeddings")] = (429, {"Retry-After": _in(30)}, b'{"error": {"message": "slow down"}}',
                                               None)
    stub.routes[("POST", "/v1/chat/completions")] = (429, {"Retry-After": _in(30)}, b"{}", None)
    settings = OpenAISettings(base_url=stub.url + "/v1", timeout_s=5.0)
    provider = OpenAIEmbeddingProvider(ModelSpec(name="e", provider="openai", kind="embed", max_input_tokens=512,
                                                  dimension=2), settings)

    async def embed() -> None:
        try:
            await provider.embed_batch(["hi"])
        finally:
            await provider.aclose()

    with pytest.raises(RateLimitError, match="slow down") as info:
        asyncio.run(embed())
    assert info.value.provider == "openai" and info.value.retry_after is not None
    assert 25 <= info.value.retry_after <= 30
    with OpenAIChatClient(settings) as client, pytest.raises(RateLimitError) as chat_info:
        client.chat([{"role": "user", "content": "hi"}], "m")
    assert chat_info.value.retry_after is not None and 25 <= chat_info.value.retry_after <= 30


def test_http_date_retry_after_reaches_the_gigachat_client(stub: Any) -> None:
    stub.routes[("POST", "/api/v1/embeddings")] = (429, {"Retry-After": _in(20)}, b'{"message": "slow down"}', None)
    with GigaChatClient(stub.settings()) as client, pytest.raises(RateLimitError) as info:
        client.embeddings(["hi"])
    assert info.value.provider == "gigachat" and info.value.retry_after is not None
    assert 15 <= info.value.retry_after <= 20
