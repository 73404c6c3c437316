"""GigaChat chat wire format: message and image planning, reply and SSE parsing, structured output.

Pure, parametrised tests of _chat_wire.py (no sockets).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest

from pipeline.errors import BadRequestError, BadResponseError, ContentRefusedError, NetworkError, ServerError
from pipeline.providers.chat import ChatReply, FunctionCall, Usage
from pipeline.providers.gigachat import _chat_wire
from pipeline.providers.gigachat._chat_wire import ChatRequest, Image, Message, SSEDecoder

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


# ---------------------------------------------------------------- chat requests


def _body(req: ChatRequest, ids: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
    plan = _chat_wire.plan_chat(req, **kw)
    return json.loads(plan.build(ids).body or b"")


def test_plan_chat_options_and_defaults() -> None:
    body = _body(ChatRequest([{"role": "user", "content": "Погода?"}], temperature=0.7, max_tokens=5,
                             flags=("a",), extra={"custom": 1}))
    assert body == {"model": "GigaChat-2", "messages": [{"role": "user", "content": "Погода?"}],
                    "temperature": 0.7, "max_tokens": 5, "flags": ["a"], "custom": 1}
    raw = _chat_wire.plan_chat(ChatRequest([{"role": "user", "content": "Погода?"}])).build().body or b""
    assert "Погода".encode() in raw and b"\\u" not in raw


def test_plan_chat_sends_temperature_as_asked() -> None:
    assert _body(ChatRequest([Message("user", "hi")], temperature=0))["temperature"] == 0


def test_system_message_must_be_first() -> None:
    assert _body(ChatRequest([Message("system", "be brief"), Message("user", "hi")]))["messages"][0]["role"] == "system"
    with pytest.raises(BadRequestError, match="system message must be the first"):
        _chat_wire.plan_chat(ChatRequest([Message("user", "hi"), Message("system", "be brief")]))


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
        _chat_wire.plan_chat(ChatRequest(messages))


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
        _chat_wire.plan_chat(ChatRequest([Message("user", "?")], functions=[weather], function_call={"name": "other"}))


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
    assert _chat_wire.is_vision_model(model) is vision


def test_images_become_uploads_then_attachments() -> None:
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "first", "images": [PNG]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "and"}, {"type": "text", "text": "this?"},
                                     {"type": "image_url", "image_url": {"url": data_url}}],
         "attachments": ["doc-1"]}]
    plan = _chat_wire.plan_chat(ChatRequest(msgs, model="GigaChat-2-Max"))
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
        _chat_wire.plan_chat(ChatRequest(messages, model=model))


def test_vision_override() -> None:
    plan = _chat_wire.plan_chat(ChatRequest([{"role": "user", "content": "x", "images": [PNG]}], model="New-Model",
                                       vision=True))
    assert len(plan.images) == 1


@pytest.mark.parametrize(("image", "data", "expected"), [
    (Image(data=PNG), PNG, ("image.png", "image/png")),
    (Image(path="/x/cat.jpg"), b"\xff\xd8\xff\xe0rest", ("cat.jpg", "image/jpeg")),
    (Image(path="/x/scan.tiff"), b"??", ("scan.tiff", "image/tiff")),
    (Image(data=b"xx", filename="a.bin", mime="image/bmp"), b"xx", ("a.bin", "image/bmp")),
])
def test_image_file(image: Image, data: bytes, expected: tuple[str, str]) -> None:
    assert _chat_wire.image_file(image, data, "message 0") == expected


def test_image_file_refuses_big_or_unknown() -> None:
    with pytest.raises(BadRequestError, match="15 MB"):
        _chat_wire.image_file(Image(data=b""), b"\xff\xd8\xff" + b"0" * (15 * 1024 * 1024), "message 0")
    with pytest.raises(BadRequestError, match="not a recognised image"):
        _chat_wire.image_file(Image(data=b"hello"), b"hello", "message 0")


# ---------------------------------------------------------------- chat responses and streams


CHAT = {"choices": [{"message": {"content": "Hello.", "role": "assistant"}, "index": 0, "finish_reason": "stop"}],
        "created": 1768996171, "model": "GigaChat:2.0.28.2", "object": "chat.completion",
        "usage": {"prompt_tokens": 17, "completion_tokens": 3, "total_tokens": 20, "precached_prompt_tokens": 2}}


def test_parse_chat() -> None:
    r = _chat_wire.parse_chat(orjson.dumps(CHAT))
    assert (r.content, r.role, r.finish_reason, r.model) == ("Hello.", "assistant", "stop", "GigaChat:2.0.28.2")
    assert r.usage == Usage(17, 3, 20, 2) and r.function_call is None and not r.refused
    assert r.message() == {"role": "assistant", "content": "Hello."}


@pytest.mark.parametrize("arguments", [{"city": "Москва"}, '{"city": "Москва"}'])
def test_parse_chat_function_call(arguments: Any) -> None:
    data = json.loads(json.dumps(CHAT))
    data["choices"][0] = {"index": 0, "finish_reason": "function_call", "message": {
        "role": "assistant", "content": "", "functions_state_id": "s-1",
        "function_call": {"name": "get_weather", "arguments": arguments}}}
    r = _chat_wire.parse_chat(orjson.dumps(data))
    assert r.function_call == FunctionCall("get_weather", {"city": "Москва"})
    assert r.message()["functions_state_id"] == "s-1"


def test_blacklist_is_returned_not_raised() -> None:
    data = json.loads(json.dumps(CHAT))
    data["choices"][0]["finish_reason"] = "blacklist"
    refused = _chat_wire.parse_chat(orjson.dumps(data))
    assert refused.refused and refused.content
    with pytest.raises(ContentRefusedError, match="blacklist"):
        refused.raise_for_refusal()
    ok = _chat_wire.parse_chat(orjson.dumps(CHAT))
    assert ok.raise_for_refusal() is ok


@pytest.mark.parametrize("body", [b"{}", b'{"choices": []}', b'{"choices": [{"message": {"function_call": '
                                  b'{"name": "f", "arguments": 3}}}]}', b"not json", b'{"choices": [{"mes'])
def test_parse_chat_refuses_wrong_answers(body: bytes) -> None:
    with pytest.raises(BadResponseError, match="/chat/completions"):
        _chat_wire.parse_chat(body)


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
    assert deltas[-1].usage == Usage(17, 42, 59, 0)
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
    fn = _chat_wire.structured_function(SCHEMA, "person")
    assert fn["name"] == "person" and fn["description"] == "Output structured response: person"
    assert fn["parameters"]["properties"]["address"] == {"type": "object", "properties": {}}
    assert SCHEMA["properties"]["address"] == {"type": "object"}  # the caller's schema is not touched
    with pytest.raises(BadRequestError):
        _chat_wire.structured_function({"type": "array"}, "x")


def _fc_response(name: str, args: dict[str, Any]) -> ChatReply:
    return ChatReply("", function_call=FunctionCall(name, args), finish_reason="function_call")


@pytest.mark.parametrize(("response", "fragment"), [
    (_fc_response("person", {"name": "John"}), "lacks required keys ['age']"),
    (_fc_response("person", {"name": "John", "age": "30"}), "'age' is not of type 'integer'"),
    (_fc_response("person", {"name": "John", "age": True}), "'age' is not of type 'integer'"),
    (_fc_response("other", {"name": "John", "age": 30}), "got function 'other'"),
    (ChatReply("John, 30", finish_reason="stop"), "got finish_reason 'stop'"),
])
def test_structured_result_refuses(response: ChatReply, fragment: str) -> None:
    with pytest.raises(BadResponseError) as info:
        _chat_wire.structured_result(response, SCHEMA, "person")
    assert fragment in str(info.value)


def test_structured_result_ok() -> None:
    args = {"name": "John", "age": 30, "extra": None}
    assert _chat_wire.structured_result(_fc_response("person", args), SCHEMA, "person") == args
    union = {"type": "object", "properties": {"nick": {"type": ["string", "null"]}}}
    assert _chat_wire.structured_result(_fc_response("p", {"nick": None}), union, "p") == {"nick": None}
