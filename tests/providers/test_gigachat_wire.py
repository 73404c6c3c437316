"""GigaChat wire format and token cache: pure, parametrised tests (no sockets).

Covers _wire.py (REST requests and parsers), auth.TokenManager with a fake clock, and the TLS context.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import uuid
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline.config import GigaChatSettings, Secret
from pipeline.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    RateLimitError,
    ServerError,
)
from pipeline.providers.gigachat import _wire
from pipeline.providers.gigachat.auth import TokenManager, TokenRequest
from pipeline.providers.gigachat.client import ssl_context

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
CREDS = "U1VQRVJTRUNSRVQtQ1JFREVOVElBTFM="  # distinctive: must never show up anywhere


# ---------------------------------------------------------------- embeddings


def _emb_body(vectors: list[Any], indices: list[int] | None = None, tokens: int = 7) -> bytes:
    indices = list(range(len(vectors))) if indices is None else indices
    return orjson.dumps({"object": "list", "model": "Embeddings", "data": [
        {"object": "embedding", "index": i, "embedding": v, "usage": {"prompt_tokens": tokens + i}}
        for i, v in zip(indices, vectors, strict=True)]})


def test_embeddings_request_is_raw_utf8() -> None:
    req = _wire.embeddings_request(["Привет", "мир"], "Embeddings")
    assert (req.method, req.path) == ("POST", "/embeddings")
    assert "Привет".encode() in (req.body or b"")
    assert json.loads(req.body or b"") == {"model": "Embeddings", "input": ["Привет", "мир"]}


def test_parse_embeddings_orders_by_index() -> None:
    body = _emb_body([[3.0, 3.5], [1.0, 1.5], [2.0, 2.5]], indices=[2, 0, 1])
    result = _wire.parse_embeddings(body, 3)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (3, 2)
    assert result.vectors[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert result.tokens == [7, 8, 9] and result.model == "Embeddings"


@pytest.mark.parametrize(("body", "n", "fragment"), [
    (_emb_body([[1.0], [2.0]]), 3, "2 vectors for 3 texts"),
    (_emb_body([[1.0], [2.0], [3.0]]), 2, "3 vectors for 2 texts"),
    (_emb_body([[1.0], [2.0]], indices=[0, 0]), 2, "indices"),
    (_emb_body([[1.0], [2.0]], indices=[1, 2]), 2, "indices"),
    (_emb_body([[1.0, 2.0], [2.0]]), 2, "different or zero dimensions"),
    (_emb_body([[], []]), 2, "different or zero dimensions"),
    (_emb_body([[1.0, None], [2.0, 3.0]]), 2, "null, NaN"),
    (_emb_body([[1.0, "x"], [2.0, 3.0]]), 2, "non-number"),
    (_emb_body([[1.0], {"a": 1}]), 2, "not a list"),
    (b'{"object": "list", "data": [{"index": 0, "embedding": [1.0, 2.0', 1, "truncated JSON"),
    (b"<html>502 Bad Gateway</html>", 1, "invalid or truncated JSON"),
    (b"", 1, "empty body"),
    (b'{"object": "list"}', 1, "unexpected response shape"),
    (b'{"data": "nope"}', 1, "unexpected response shape"),
    (b"[1, 2]", 1, "unexpected response shape"),
])
def test_parse_embeddings_refuses_wrong_answers(body: bytes, n: int, fragment: str) -> None:
    with pytest.raises(BadResponseError, match="/embeddings") as info:
        _wire.parse_embeddings(body, n)
    assert fragment in str(info.value)
    assert info.value.retryable


@pytest.mark.parametrize("texts", [["ok", 3], "one string", ["ok", None]])
def test_embeddings_request_refuses_non_text(texts: Any) -> None:
    with pytest.raises(BadRequestError):
        _wire.embeddings_request(texts, "Embeddings")


# ---------------------------------------------------------------- tokens, models, balance, files


def test_tokens_count() -> None:
    req = _wire.tokens_count_request(["First text", "Second text"], "GigaChat")
    assert req.path == "/tokens/count" and json.loads(req.body or b"")["input"] == ["First text", "Second text"]
    body = b'[{"object": "tokens", "tokens": 2, "characters": 10}, {"object": "tokens", "tokens": 3}]'
    assert _wire.parse_tokens_count(body, 2) == [2, 3]
    with pytest.raises(BadResponseError, match="2 token counts for 3 texts"):
        _wire.parse_tokens_count(body, 3)
    with pytest.raises(BadResponseError):
        _wire.parse_tokens_count(b'{"tokens": 2}', 1)


def test_models_balance_files() -> None:
    models = b'{"object": "list", "data": [{"id": "GigaChat-2", "object": "model", "owned_by": "s", "type": "chat"}]}'
    assert _wire.parse_models(models)[0].id == "GigaChat-2"
    assert _wire.parse_model(b'{"id": "Embeddings", "object": "model"}', "/models/Embeddings").id == "Embeddings"
    assert _wire.model_request("GigaChat-2-Max").path == "/models/GigaChat-2-Max"
    with pytest.raises(BadRequestError):
        _wire.model_request("../balance")
    balance = b'{"balance": [{"usage": "GigaChat-Pro", "value": 991490}, {"usage": "embeddings", "value": 5}]}'
    assert _wire.parse_balance(balance) == {"GigaChat-Pro": 991490.0, "embeddings": 5.0}
    assert _wire.parse_file_id(b'{"id": "f-1", "object": "file"}') == "f-1"
    with pytest.raises(BadResponseError):
        _wire.parse_file_id(b'{"object": "file"}')
    up = _wire.upload_request(PNG, "a.png", "image/png")
    assert up.path == "/files" and up.form == {"purpose": "general"} and up.file == ("a.png", PNG, "image/png")


# ---------------------------------------------------------------- headers and tokens


def test_api_headers_send_only_what_is_given() -> None:
    h = _wire.api_headers("tok", json_body=True)
    assert h == {"Authorization": "Bearer tok", "Accept": "application/json", "Content-Type": "application/json"}
    h = _wire.api_headers("tok", json_body=True, stream=True, request_id="r", session_id="s", user_agent="ua")
    assert h["Accept"] == "text/event-stream" and h["Cache-Control"] == "no-store"
    assert (h["X-Request-ID"], h["X-Session-ID"], h["User-Agent"]) == ("r", "s", "ua")


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"access_token": "abc", "expires_at": 1768999770000}', ("abc", 1768999770000)),
    (b'{"tok": "abc", "exp": 1768999770000}', ("abc", 1768999770000)),
    (b'{"access_token": "abc", "expires_at": "1768999770000"}', ("abc", 1768999770000)),
    (b'{"tok": "abc", "exp": 1768999770}', ("abc", 1768999770000)),
    (b'{"access_token": "abc"}', ("abc", 0)),
])
def test_parse_token(body: bytes, expected: tuple[str, int]) -> None:
    assert _wire.parse_token(body, "/api/v2/oauth") == expected


@pytest.mark.parametrize("body", [b"{}", b'{"access_token": ""}', b"[]", b"<html>", b'{"access_token": "a", "exp'])
def test_parse_token_refuses(body: bytes) -> None:
    with pytest.raises(BadResponseError, match="/api/v2/oauth"):
        _wire.parse_token(body, "/api/v2/oauth")


class Clock:
    def __init__(self, now: float = 1_768_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTokenEndpoint:
    """Issues tok-1, tok-2, ... valid for ttl_s; records the requests."""

    def __init__(self, clock: Clock, ttl_s: float = 1800, status: int = 200, body: bytes = b"") -> None:
        self.clock, self.ttl_s, self.status, self.body = clock, ttl_s, status, body
        self.requests: list[TokenRequest] = []

    def __call__(self, request: TokenRequest) -> _wire.RawResponse:
        self.requests.append(request)
        if self.status != 200:
            return _wire.RawResponse(self.status, self.body)
        expires = int((self.clock() + self.ttl_s) * 1000)
        return _wire.RawResponse(200, orjson.dumps({"access_token": f"tok-{len(self.requests)}",
                                                    "expires_at": expires}))


def _settings(**kw: Any) -> GigaChatSettings:
    base = {"base_url": "https://giga.test/api/v1", "auth_url": "https://auth.test/api/v2/oauth"}
    return GigaChatSettings(**(base | kw))


def test_oauth_request_shape() -> None:
    tm = TokenManager(_settings(credentials=Secret(CREDS), scope="GIGACHAT_API_CORP"), user_agent="ua")
    req = tm.token_request()
    assert req.url == "https://auth.test/api/v2/oauth" and req.endpoint == "/api/v2/oauth"
    assert req.headers["Authorization"] == f"Basic {CREDS}"
    assert uuid.UUID(req.headers["RqUID"]).version == 4
    assert req.headers["RqUID"] != tm.token_request().headers["RqUID"]
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.headers["Accept"] == "application/json"
    assert req.form == {"scope": "GIGACHAT_API_CORP"}
    assert CREDS not in repr(req) and CREDS not in repr(tm)


def test_user_password_request_shape() -> None:
    tm = TokenManager(_settings(user="u", password=Secret("p@ss")))
    req = tm.token_request()
    assert tm.mode == "password" and req.url == "https://giga.test/api/v1/token" and req.form is None
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p@ss").decode()


def test_token_reused_until_buffer_then_refreshed() -> None:
    clock = Clock()
    endpoint = FakeTokenEndpoint(clock)
    tm = TokenManager(_settings(credentials=Secret(CREDS)), clock=clock)
    assert tm.token(endpoint).value.get() == "tok-1"
    clock.now += 1800 - 61
    assert tm.token(endpoint).value.get() == "tok-1"
    clock.now += 2  # 59 s left: inside the 60 s buffer
    assert tm.token(endpoint).value.get() == "tok-2"
    assert len(endpoint.requests) == 2 and tm.refreshes == 2


def test_short_lived_token_refreshes_at_half_life() -> None:
    clock = Clock()
    endpoint = FakeTokenEndpoint(clock, ttl_s=10)
    tm = TokenManager(_settings(credentials=Secret(CREDS)), clock=clock)
    tm.token(endpoint)
    clock.now += 4.9
    assert tm.token(endpoint).value.get() == "tok-1"
    clock.now += 0.2
    assert tm.token(endpoint).value.get() == "tok-2"


def test_async_refresh_runs_ahead_while_the_stale_token_still_serves() -> None:
    clock = Clock()
    endpoint = FakeTokenEndpoint(clock, ttl_s=30)
    tm = TokenManager(_settings(credentials=Secret(CREDS)), clock=clock)

    async def fetch(request: TokenRequest) -> _wire.RawResponse:
        await asyncio.sleep(0.01)  # a round trip: callers meanwhile must not wait for it
        return endpoint(request)

    async def go() -> None:
        assert (await tm.atoken(fetch)).value.get() == "tok-1"
        clock.now += 16  # past half its life: due for renewal, 14 s from expiry
        got = await asyncio.gather(*(tm.atoken(fetch) for _ in range(20)))
        assert {t.value.get() for t in got} == {"tok-1"} and tm.refreshes == 2  # one refresh, in the background
        await asyncio.sleep(0.05)
        assert (await tm.atoken(fetch)).value.get() == "tok-2" and len(endpoint.requests) == 2
        clock.now += 27  # tok-2 is 3 s from expiry: too close to send, callers wait for tok-3
        assert (await tm.atoken(fetch)).value.get() == "tok-3"

    asyncio.run(go())


def test_failed_refresh_ahead_keeps_the_old_token_and_retries_in_line() -> None:
    clock = Clock()
    endpoint = FakeTokenEndpoint(clock, ttl_s=30)
    tm = TokenManager(_settings(credentials=Secret(CREDS)), clock=clock)

    async def fetch(request: TokenRequest) -> _wire.RawResponse:
        return endpoint(request)

    async def go() -> None:
        await tm.atoken(fetch)
        endpoint.status, endpoint.body = 500, b'{"message": "down"}'
        clock.now += 16
        assert (await tm.atoken(fetch)).value.get() == "tok-1"
        await asyncio.sleep(0.01)
        assert (await tm.atoken(fetch)).value.get() == "tok-1"  # the failure did not drop a working token
        await asyncio.sleep(0.01)
        assert len(endpoint.requests) == 2  # and it is not retried on every call
        endpoint.status = 200
        clock.now += 10  # 4 s from expiry: fetched in line now
        assert (await tm.atoken(fetch)).value.get().startswith("tok-")
        assert tm.current() is not None

    asyncio.run(go())


def test_invalidate_only_drops_the_refused_token() -> None:
    clock = Clock()
    endpoint = FakeTokenEndpoint(clock)
    tm = TokenManager(_settings(credentials=Secret(CREDS)), clock=clock)
    old = tm.token(endpoint)
    tm.invalidate(old)
    new = tm.token(endpoint)
    tm.invalidate(old)  # a late caller holding the old token must not drop the new one
    assert tm.current() is new


def test_preissued_token_never_expires_and_falls_back() -> None:
    clock = Clock()
    endpoint = FakeTokenEndpoint(clock)
    alone = TokenManager(_settings(access_token=Secret("given-token")), clock=clock)
    tok = alone.token(endpoint)
    assert tok.value.get() == "given-token" and tok.expires_at_ms == 0 and not endpoint.requests
    clock.now += 10**7
    assert alone.current() is tok
    alone.invalidate(tok)
    with pytest.raises(AuthError, match="no credentials are set") as info:
        alone.token(endpoint)
    assert "given-token" not in str(info.value)
    both = TokenManager(_settings(access_token=Secret("given-token"), credentials=Secret(CREDS)), clock=clock)
    both.invalidate(both.token(endpoint))
    assert both.token(endpoint).value.get() == "tok-1"


def test_no_credentials_at_all() -> None:
    with pytest.raises(AuthError, match="GIGACHAT_CREDENTIALS"):
        TokenManager(_settings()).token(FakeTokenEndpoint(Clock()))


@pytest.mark.parametrize(("status", "cls"), [(401, AuthError), (400, AuthError), (403, AuthError),
                                              (429, RateLimitError), (500, ServerError)])
def test_token_refusal(status: int, cls: type) -> None:
    body = b'{"code": 6, "message": "credentials doesn\'t match db data: ' + CREDS.encode() + b'"}'
    tm = TokenManager(_settings(credentials=Secret(CREDS)), clock=Clock())
    with pytest.raises(cls) as info:
        tm.token(FakeTokenEndpoint(Clock(), status=status, body=body))
    text = str(info.value) + repr(info.value) + repr(info.value.args)
    assert CREDS not in text and "credentials doesn't match db data" in text and f"HTTP {status}" in text


def test_scrub() -> None:
    tm = TokenManager(_settings(credentials=Secret(CREDS), access_token=Secret("given-token")))
    assert tm.scrub(f"echo {CREDS} and given-token".encode()) == b"echo *** and ***"


# ---------------------------------------------------------------- TLS


def test_ssl_context_choices(tls_ca: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl_context(_settings(ca_bundle_file=str(ca_file)))
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ssl_context(_settings()).verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigError, match="GIGACHAT_CA_BUNDLE_FILE"):
        ssl_context(_settings(ca_bundle_file=str(tmp_path / "missing.pem")))
    with caplog.at_level(logging.WARNING, logger="pipeline.gigachat"):
        off = ssl_context(_settings(verify_ssl_certs=False, base_url="https://off.test/api/v1"))
        ssl_context(_settings(verify_ssl_certs=False, base_url="https://off.test/api/v1"))
    assert off.verify_mode == ssl.CERT_NONE
    assert [r.levelno for r in caplog.records] == [logging.WARNING]  # once
    assert "verification is OFF" in caplog.records[0].getMessage()
    client_cert = tls_ca.issue_cert("client@test")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    client_cert.cert_chain_pems[0].write_to_path(str(cert))
    client_cert.private_key_pem.write_to_path(str(key))
    assert ssl_context(_settings(cert_file=str(cert), key_file=str(key))).verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigError, match="GIGACHAT_CERT_FILE"):
        ssl_context(_settings(cert_file=str(key), key_file=str(key)))
