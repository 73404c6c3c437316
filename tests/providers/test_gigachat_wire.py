"""GigaChat wire format and token cache: pure, parametrised tests (no sockets).

Covers _wire.py (requests, parsers, status mapping), auth.TokenManager with a fake clock, and map_httpx_error.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import uuid
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from pipeline.config import GigaChatSettings, Secret
from pipeline.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    ContentRefusedError,
    NetworkError,
    ProviderError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
)
from pipeline.providers.gigachat import _wire
from pipeline.providers.gigachat._wire import ChatRequest, FunctionCall, Image, Message, SSEDecoder
from pipeline.providers.gigachat.auth import TokenManager, TokenRequest
from pipeline.providers.gigachat.client import map_httpx_error, ssl_context

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
CREDS = "U1VQRVJTRUNSRVQtQ1JFREVOVElBTFM="  # distinctive: must never show up anywhere


# ---------------------------------------------------------------- status mapping


@pytest.mark.parametrize(("status", "cls", "retryable"), [
    (400, BadRequestError, False), (401, AuthError, False), (403, AuthError, False),
    (404, BadRequestError, False), (413, RequestTooLargeError, False), (422, BadRequestError, False),
    (429, RateLimitError, True), (500, ServerError, True), (502, ServerError, True), (503, ServerError, True),
    (402, ProviderError, False), (409, ProviderError, False),
])
def test_error_for_status_maps_and_names_everything(status: int, cls: type, retryable: bool) -> None:
    err = _wire.error_for_status(status, b'{"status": %d, "message": "No such model"}\n' % status, "/models/X")
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
    assert _wire.server_message(503, body) == expected


def test_oauth_400_is_an_auth_error() -> None:
    err = _wire.error_for_status(400, b'{"code": 5, "message": "scope is empty"}', "/api/v2/oauth", oauth=True)
    assert isinstance(err, AuthError) and "scope is empty" in str(err)


@pytest.mark.parametrize(("header", "expected"), [
    ("2", 2.0), ("0.25", 0.25), ("-3", 0.0), (None, None), ("", None), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
])
def test_retry_after(header: str | None, expected: float | None) -> None:
    now = 1445412480.0  # 07:28:00 that day
    assert _wire.parse_retry_after(header, now=now) == expected
    err = _wire.error_for_status(429, b"{}", "/embeddings", retry_after=header, now=now)
    assert isinstance(err, RateLimitError) and err.retry_after == expected


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


# ---------------------------------------------------------------- chat requests


def _body(req: ChatRequest, ids: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
    plan = _wire.plan_chat(req, **kw)
    return json.loads(plan.build(ids).body or b"")


def test_plan_chat_options_and_defaults() -> None:
    body = _body(ChatRequest([{"role": "user", "content": "Погода?"}], temperature=0.7, max_tokens=5,
                             flags=("a",), extra={"custom": 1}))
    assert body == {"model": "GigaChat-2", "messages": [{"role": "user", "content": "Погода?"}],
                    "temperature": 0.7, "max_tokens": 5, "flags": ["a"], "custom": 1}
    raw = _wire.plan_chat(ChatRequest([{"role": "user", "content": "Погода?"}])).build().body or b""
    assert "Погода".encode() in raw and b"\\u" not in raw


def test_plan_chat_sends_temperature_as_asked() -> None:
    assert _body(ChatRequest([Message("user", "hi")], temperature=0))["temperature"] == 0


def test_system_message_must_be_first() -> None:
    assert _body(ChatRequest([Message("system", "be brief"), Message("user", "hi")]))["messages"][0]["role"] == "system"
    with pytest.raises(BadRequestError, match="system message must be the first"):
        _wire.plan_chat(ChatRequest([Message("user", "hi"), Message("system", "be brief")]))


@pytest.mark.parametrize(("content", "sent"), [
    ({"temp": 18}, '{"temp": 18}'), ('{"temp": 18}', '{"temp": 18}'), ("18 градусов", '"18 градусов"'),
    (["a"], '["a"]'), (None, '""'),
])
def test_function_message_content_is_a_json_string(content: Any, sent: str) -> None:
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "?"},
        {"role": "assistant", "content": "", "function_call": {"name": "w", "arguments": {"c": "M"}}},
        {"role": "tool", "name": "w", "content": content}]
    out = _body(ChatRequest(msgs))["messages"]
    assert out[2] == {"role": "function", "name": "w", "content": sent}
    assert out[1]["function_call"] == {"name": "w", "arguments": {"c": "M"}}


@pytest.mark.parametrize("messages", [
    [{"role": "wizard", "content": "x"}],
    [{"role": "user", "content": 42}],
    [],
    [{"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "a", "arguments": "{}"}}, {"function": {"name": "b", "arguments": "{}"}}]}],
    [{"role": "assistant", "content": "", "function_call": {"name": "a", "arguments": "not json"}}],
    [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}],
    "hello",
    [("user", "hello")],
])
def test_bad_messages_are_refused_before_sending(messages: list[Any]) -> None:
    with pytest.raises(BadRequestError):
        _wire.plan_chat(ChatRequest(messages))


def test_functions_and_forced_call() -> None:
    weather = {"name": "get_weather", "description": "Погода",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    tool = {"type": "function", "function": {"name": "no_params"}}
    body = _body(ChatRequest([Message("user", "?")], functions=[weather, tool], function_call="get_weather"))
    assert body["functions"][0] == weather
    assert body["functions"][1] == {"name": "no_params", "parameters": {"type": "object", "properties": {}}}
    assert body["function_call"] == {"name": "get_weather"}
    assert _body(ChatRequest([Message("user", "?")], functions=[weather], function_call="auto"))["function_call"] == "auto"
    with pytest.raises(BadRequestError, match="not among the functions"):
        _wire.plan_chat(ChatRequest([Message("user", "?")], functions=[weather], function_call={"name": "other"}))


def test_openai_tool_call_becomes_function_call() -> None:
    msg = {"role": "assistant", "content": None,
           "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"c": "M"}'}}]}
    out = _body(ChatRequest([{"role": "user", "content": "?"}, msg]))["messages"][1]
    assert out == {"role": "assistant", "content": "", "function_call": {"name": "w", "arguments": {"c": "M"}}}


@pytest.mark.parametrize(("model", "vision"), [
    ("GigaChat-2-Pro", True), ("GigaChat-2-Max", True), ("GigaChat-2-Max-preview", True),
    ("GigaChat-Max:2.0.28.2", True), ("GigaChat-3-Ultra", True), ("GigaChat-2", False),
    ("GigaChat-2-Lite", False), ("GigaChat", False), ("GigaChat-Plus", False), ("Embeddings", False),
])
def test_is_vision_model(model: str, vision: bool) -> None:
    assert _wire.is_vision_model(model) is vision


def test_images_become_uploads_then_attachments() -> None:
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "first", "images": [PNG]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "and"}, {"type": "text", "text": "this?"},
                                     {"type": "image_url", "image_url": {"url": data_url}}],
         "attachments": ["doc-1"]}]
    plan = _wire.plan_chat(ChatRequest(msgs, model="GigaChat-2-Max"))
    assert [i for i, _ in plan.images] == [0, 2]
    assert plan.images[1][1].data == PNG and plan.images[1][1].mime == "image/png"
    body = json.loads(plan.build(("f-a", "f-b")).body or b"")
    assert body["messages"][0]["attachments"] == ["f-a"]
    assert body["messages"][2] == {"role": "user", "content": "and\nthis?", "attachments": ["doc-1", "f-b"]}
    assert "images" not in body["messages"][0]


@pytest.mark.parametrize(("messages", "model", "fragment"), [
    ([{"role": "user", "content": "x", "images": [PNG, PNG]}], "GigaChat-2-Max", "at most 1 image per message"),
    ([{"role": "user", "content": "x", "images": [PNG]}] * 11, "GigaChat-2-Max", "at most 10 images"),
    ([{"role": "user", "content": "x", "images": [PNG]}], "GigaChat-2-Lite", "does not take images"),
    ([{"role": "user", "content": "x", "images": ["data:image/png;base64,@@@"]}], "GigaChat-2-Max", "base64"),
    ([{"role": "user", "content": "x", "images": [3.5]}], "GigaChat-2-Max", "cannot use a float"),
    ([{"role": "user", "content": "x", "images": [Image()]}], "GigaChat-2-Max", "needs data, a path or a url"),
])
def test_image_limits_refused_before_sending(messages: list[Any], model: str, fragment: str) -> None:
    with pytest.raises(BadRequestError, match=fragment):
        _wire.plan_chat(ChatRequest(messages, model=model))


def test_vision_override() -> None:
    plan = _wire.plan_chat(ChatRequest([{"role": "user", "content": "x", "images": [PNG]}], model="New-Model",
                                       vision=True))
    assert len(plan.images) == 1


@pytest.mark.parametrize(("image", "data", "expected"), [
    (Image(data=PNG), PNG, ("image.png", "image/png")),
    (Image(path="/x/cat.jpg"), b"\xff\xd8\xff\xe0rest", ("cat.jpg", "image/jpeg")),
    (Image(path="/x/scan.tiff"), b"??", ("scan.tiff", "image/tiff")),
    (Image(data=b"xx", filename="a.bin", mime="image/bmp"), b"xx", ("a.bin", "image/bmp")),
])
def test_image_file(image: Image, data: bytes, expected: tuple[str, str]) -> None:
    assert _wire.image_file(image, data, "message 0") == expected


def test_image_file_refuses_big_or_unknown() -> None:
    with pytest.raises(BadRequestError, match="15 MB"):
        _wire.image_file(Image(data=b""), b"\xff\xd8\xff" + b"0" * (15 * 1024 * 1024), "message 0")
    with pytest.raises(BadRequestError, match="not a recognised image"):
        _wire.image_file(Image(data=b"hello"), b"hello", "message 0")


# ---------------------------------------------------------------- chat responses and streams


CHAT = {"choices": [{"message": {"content": "Hello.", "role": "assistant"}, "index": 0, "finish_reason": "stop"}],
        "created": 1768996171, "model": "GigaChat:2.0.28.2", "object": "chat.completion",
        "usage": {"prompt_tokens": 17, "completion_tokens": 3, "total_tokens": 20, "precached_prompt_tokens": 2}}


def test_parse_chat() -> None:
    r = _wire.parse_chat(orjson.dumps(CHAT))
    assert (r.content, r.role, r.finish_reason, r.model) == ("Hello.", "assistant", "stop", "GigaChat:2.0.28.2")
    assert r.usage == _wire.Usage(17, 3, 20, 2) and r.function_call is None and not r.refused
    assert r.message() == {"role": "assistant", "content": "Hello."}


@pytest.mark.parametrize("arguments", [{"city": "Москва"}, '{"city": "Москва"}'])
def test_parse_chat_function_call(arguments: Any) -> None:
    data = json.loads(json.dumps(CHAT))
    data["choices"][0] = {"index": 0, "finish_reason": "function_call", "message": {
        "role": "assistant", "content": "", "functions_state_id": "s-1",
        "function_call": {"name": "get_weather", "arguments": arguments}}}
    r = _wire.parse_chat(orjson.dumps(data))
    assert r.function_call == FunctionCall("get_weather", {"city": "Москва"})
    assert r.message()["functions_state_id"] == "s-1"


def test_blacklist_is_returned_not_raised() -> None:
    data = json.loads(json.dumps(CHAT))
    data["choices"][0]["finish_reason"] = "blacklist"
    refused = _wire.parse_chat(orjson.dumps(data))
    assert refused.refused and refused.content
    with pytest.raises(ContentRefusedError, match="blacklist"):
        refused.raise_for_refusal()
    ok = _wire.parse_chat(orjson.dumps(CHAT))
    assert ok.raise_for_refusal() is ok


@pytest.mark.parametrize("body", [b"{}", b'{"choices": []}', b'{"choices": [{"message": {"function_call": '
                                  b'{"name": "f", "arguments": 3}}}]}', b"not json", b'{"choices": [{"mes'])
def test_parse_chat_refuses_wrong_answers(body: bytes) -> None:
    with pytest.raises(BadResponseError, match="/chat/completions"):
        _wire.parse_chat(body)


SSE = [
    'data: {"choices":[{"delta":{"content":"1, 2","role":"assistant"},"index":0}],"model":"GigaChat:2"}',
    "",
    ": keep-alive comment",
    'data:{"choices":[{"delta":{"content":", 3"},"index":0}],"model":"GigaChat:2"}',
    "",
    'data: {"choices":[{"delta":{"content":""},"index":0,"finish_reason":"stop"}],"usage":{"prompt_tokens":17,'
    '"completion_tokens":42,"total_tokens":59}}',
    "data: [DONE]",
]


def test_sse_decoder() -> None:
    decoder = SSEDecoder()
    deltas = [d for d in map(decoder.feed, SSE) if d is not None]
    assert "".join(d.content for d in deltas) == "1, 2, 3"
    assert deltas[0].role == "assistant" and deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage == _wire.Usage(17, 42, 59, 0)
    assert decoder.done
    decoder.close()


@pytest.mark.parametrize(("lines", "ok"), [(SSE[:-1], True), (SSE[:2], False), ([], False)])
def test_sse_end_without_done(lines: list[str], ok: bool) -> None:
    decoder = SSEDecoder()
    for line in lines:
        decoder.feed(line)
    if ok:
        decoder.close()
    else:
        with pytest.raises(NetworkError, match="stream ended before completion"):
            decoder.close()


@pytest.mark.parametrize(("line", "cls"), [
    ('data: {"status": 500, "message": "boom"}', ServerError),
    ('data: {"choices": [{"delta": {"con', BadResponseError),
])
def test_sse_bad_events(line: str, cls: type) -> None:
    with pytest.raises(cls):
        SSEDecoder().feed(line)


def test_sse_function_call_delta() -> None:
    line = ('data: {"choices":[{"delta":{"content":"","function_call":{"name":"f","arguments":{"a":1}}},'
            '"index":0,"finish_reason":"function_call"}]}')
    delta = SSEDecoder().feed(line)
    assert delta is not None and delta.function_call == FunctionCall("f", {"a": 1})


# ---------------------------------------------------------------- structured output


SCHEMA: dict[str, Any] = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "address": {"type": "object"}}, "required": ["name", "age"]}


def test_structured_function_fills_properties() -> None:
    fn = _wire.structured_function(SCHEMA, "person")
    assert fn["name"] == "person" and fn["description"] == "Output structured response: person"
    assert fn["parameters"]["properties"]["address"] == {"type": "object", "properties": {}}
    assert SCHEMA["properties"]["address"] == {"type": "object"}  # the caller's schema is not touched
    with pytest.raises(BadRequestError):
        _wire.structured_function({"type": "array"}, "x")


def _fc_response(name: str, args: dict[str, Any]) -> _wire.ChatResponse:
    return _wire.ChatResponse("", function_call=FunctionCall(name, args), finish_reason="function_call")


@pytest.mark.parametrize(("response", "fragment"), [
    (_fc_response("person", {"name": "John"}), "lacks required keys ['age']"),
    (_fc_response("person", {"name": "John", "age": "30"}), "'age' is not of type 'integer'"),
    (_fc_response("person", {"name": "John", "age": True}), "'age' is not of type 'integer'"),
    (_fc_response("other", {"name": "John", "age": 30}), "got function 'other'"),
    (_wire.ChatResponse("John, 30", finish_reason="stop"), "got finish_reason 'stop'"),
])
def test_structured_result_refuses(response: _wire.ChatResponse, fragment: str) -> None:
    with pytest.raises(BadResponseError) as info:
        _wire.structured_result(response, SCHEMA, "person")
    assert fragment in str(info.value)


def test_structured_result_ok() -> None:
    args = {"name": "John", "age": 30, "extra": None}
    assert _wire.structured_result(_fc_response("person", args), SCHEMA, "person") == args
    union = {"type": "object", "properties": {"nick": {"type": ["string", "null"]}}}
    assert _wire.structured_result(_fc_response("p", {"nick": None}), union, "p") == {"nick": None}


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


# ---------------------------------------------------------------- httpx errors and TLS


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
    err = map_httpx_error(exc, "/embeddings", 30.0)
    assert type(err) is cls and err.retryable is retryable and fragment in str(err)
    assert "/embeddings" in str(err)


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
