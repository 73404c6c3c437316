"""Emulator chat: answers, sources, errors, limits, streaming, function calls and image attachments.

Real HTTP against emulators on 127.0.0.1; streams are parsed line by line as the SDK does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pipeline.emulator import RunningEmulator

StartEmulator = Callable[..., RunningEmulator]  # the make_emulator fixture
MakeClient = Callable[[RunningEmulator], httpx.Client]  # the make_client fixture
SOURCES = """Answer from the sources and cite them as [n].
[1] The Eiffel Tower is in Paris. It was finished in 1889.
[2] Mount Elbrus is the highest mountain in Russia and Europe.
[3] Lake Baikal holds about a fifth of the world's unfrozen fresh water."""
WEATHER = {
    "name": "get_weather",
    "description": "Текущая погода в городе",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "units": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "detailed": {"type": "boolean"},
            "note": {"type": "number"},
        },
        "required": ["city", "days", "units", "detailed"],
    },
}
SEARCH = {
    "name": "search_docs",
    "description": "Search the knowledge base documents",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}


def _chat(client: httpx.Client, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return client.post("/chat/completions", json={"model": "GigaChat-2", "messages": messages, **extra})


def _user(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": text, **extra}


def _stream_events(client: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, list[str]]:
    """The data lines of a stream, read one line at a time."""
    with client.stream("POST", "/chat/completions", json={**body, "stream": True}) as response:
        lines = list(response.iter_lines())
    return response, lines


def test_answer_has_every_sdk_field_and_is_deterministic(client: httpx.Client) -> None:
    response = _chat(client, [_user("What is the capital of France?")])
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "GigaChat-2:2.0.28.2"
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert "What is the capital of France?" in choice["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    again = _chat(client, [_user("What is the capital of France?")]).json()
    assert again["choices"] == body["choices"] and again["usage"] == usage


def test_answer_cites_the_matching_sources(client: httpx.Client) -> None:
    messages = [{"role": "system", "content": SOURCES}, _user("Where is the Eiffel Tower?")]
    content = _chat(client, messages).json()["choices"][0]["message"]["content"]
    assert content == "The Eiffel Tower is in Paris. It was finished in 1889 [1]."
    in_user = _chat(client, [_user(f"{SOURCES}\n\nQuestion: how much fresh water is in lake Baikal?")])
    assert "[3]" in in_user.json()["choices"][0]["message"]["content"]
    nothing = _chat(client, [{"role": "system", "content": SOURCES}, _user("Who painted the Mona Lisa?")])
    assert "[" not in nothing.json()["choices"][0]["message"]["content"]


def test_russian_sources_match_inflected_words(client: httpx.Client) -> None:
    system = "[1] Байкал — самое глубокое озеро на планете.\n[2] Эльбрус — самая высокая гора России."
    content = _chat(client, [{"role": "system", "content": system}, _user("Какая гора самая высокая?")])
    assert content.json()["choices"][0]["message"]["content"].endswith("[2].")


@pytest.mark.parametrize(
    ("extra", "messages", "status", "message"),
    [
        ({"temperature": 0}, [_user("hi")], 422, "Invalid params: temperature must be in range (0, +inf)"),
        ({"temperature": -1.0}, [_user("hi")], 422, "Invalid params: temperature must be in range (0, +inf)"),
        (
            {},
            [_user("hi"), {"role": "system", "content": "late"}],
            422,
            "system message must be the first message",
        ),
        ({"model": "GigaChat-7"}, [_user("hi")], 404, "No such model"),
        ({}, [], 422, None),
        ({}, [{"role": "robot", "content": "hi"}], 422, None),
        ({}, [{"role": "function", "name": "f", "content": "not json"}], 422, None),
        ({"function_call": {"name": "missing"}, "functions": [SEARCH]}, [_user("hi")], 422, None),
    ],
)
def test_rejected_requests(
    client: httpx.Client,
    extra: dict[str, Any],
    messages: list[dict[str, Any]],
    status: int,
    message: str | None,
) -> None:
    response = _chat(client, messages, **extra)
    assert response.status_code == status
    assert response.json()["status"] == status
    if message is not None:
        assert response.json()["message"] == message


def test_small_temperature_is_accepted(client: httpx.Client) -> None:
    assert _chat(client, [_user("hi")], temperature=0.001).status_code == 200


def test_max_tokens_truncates_with_length(client: httpx.Client) -> None:
    body = _chat(client, [_user("Tell me everything about the history of Rome")], max_tokens=3).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert len(body["choices"][0]["message"]["content"]) <= 9


def test_blacklisted_topic(make_emulator: StartEmulator, make_client: MakeClient) -> None:
    client = make_client(make_emulator(blacklist_word="forbidden"))
    body = _chat(client, [_user("Tell me about the FORBIDDEN thing")]).json()
    assert body["choices"][0]["finish_reason"] == "blacklist"
    assert body["choices"][0]["message"]["content"]


def test_stream_format(client: httpx.Client) -> None:
    messages = [_user("Please describe the weather in Moscow in spring")]
    response, lines = _stream_events(client, {"model": "GigaChat-2", "messages": messages})
    assert response.headers["content-type"].split(";")[0] == "text/event-stream"
    events = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in events)
    assert lines[1::2] == [""] * (len(lines) // 2)  # a blank line after every event
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in events[:-1]]
    assert len(chunks) >= 3
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas[0]["role"] == "assistant" and all("role" not in d for d in deltas[1:])
    assert all(
        chunk["object"] == "chat.completion" and chunk["model"] == "GigaChat-2:2.0.28.2" for chunk in chunks
    )
    assert deltas[-1] == {"content": ""} and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "usage" in chunks[-1] and all("usage" not in c for c in chunks[:-1])
    plain = _chat(client, messages).json()
    assert "".join(d["content"] for d in deltas) == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == plain["usage"]


def test_stream_break_after_cuts_the_connection(
    make_emulator: StartEmulator, make_client: MakeClient
) -> None:
    emu = make_emulator(stream_break_after=2)
    client = make_client(emu)
    received: list[str] = []
    body = {"model": "GigaChat-2", "messages": [_user("a long enough question to need several chunks")]}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/chat/completions", json=body | {"stream": True}) as response,
    ):
        received.extend(line for line in response.iter_lines() if line)
    assert len(received) == 2 and "data: [DONE]" not in received
    assert emu.stats()["streams_broken"] == 1


def test_forced_function_call_and_round_trip(client: httpx.Client) -> None:
    messages = [_user("Погода в «Нижний Новгород» на 3 дня?")]
    body = _chat(client, messages, functions=[SEARCH, WEATHER], function_call={"name": "get_weather"}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call"
    message = choice["message"]
    assert message["content"] == ""
    assert message["function_call"] == {
        "name": "get_weather",
        "arguments": {"city": "Нижний Новгород", "days": 3, "units": "celsius", "detailed": True},
    }
    assert len(message["functions_state_id"]) == 36
    messages += [message, {"role": "function", "name": "get_weather", "content": json.dumps({"temp": 18})}]
    after = _chat(client, messages, functions=[SEARCH, WEATHER]).json()["choices"][0]
    assert after["finish_reason"] == "stop"
    assert "get_weather" in after["message"]["content"] and '{"temp":18}' in after["message"]["content"]


@pytest.mark.parametrize(
    ("question", "mode", "called"),
    [
        ("Какая погода завтра?", "auto", "get_weather"),
        ("Please search the documents for the refund policy", None, "search_docs"),
        ("найди мне договор", "auto", "search_docs"),
        ("Call search_docs now", "auto", "search_docs"),
        ("Hello there", "auto", None),
        ("Какая погода завтра?", "none", None),
    ],
)
def test_auto_function_choice(
    client: httpx.Client, question: str, mode: str | None, called: str | None
) -> None:
    extra: dict[str, Any] = {"functions": [SEARCH, WEATHER]} | ({"function_call": mode} if mode else {})
    message = _chat(client, [_user(question)], **extra).json()["choices"][0]["message"]
    assert (message.get("function_call") or {}).get("name") == called


def test_function_result_with_sources_is_cited(client: httpx.Client) -> None:
    call = _chat(client, [_user("search who built the tower")], functions=[SEARCH]).json()["choices"][0][
        "message"
    ]
    result = {
        "results": [{"text": "Gustave Eiffel's company built the tower."}, {"text": "Paris is in France."}]
    }
    messages = [
        _user("search who built the tower"),
        call,
        {"role": "function", "content": json.dumps(result)},
    ]
    content = _chat(client, messages, functions=[SEARCH]).json()["choices"][0]["message"]["content"]
    assert content.startswith("Gustave Eiffel's company built the tower [1].")


def test_function_call_in_a_stream(client: httpx.Client) -> None:
    body = {"model": "GigaChat-2", "messages": [_user("найди отчёт")], "functions": [SEARCH]}
    _, lines = _stream_events(client, body)
    events = [line for line in lines if line]
    assert events[-1] == "data: [DONE]" and len(events) == 2
    chunk = json.loads(events[0].removeprefix("data: "))
    choice = chunk["choices"][0]
    assert choice["finish_reason"] == "function_call" and "usage" in chunk
    assert choice["delta"]["function_call"] == {"name": "search_docs", "arguments": {"query": "найди отчёт"}}


def _upload(client: httpx.Client, name: str, data: bytes, kind: str = "image/png") -> httpx.Response:
    return client.post("/files", files={"file": (name, data, kind)}, data={"purpose": "general"})


def test_file_lifecycle(client: httpx.Client, png_bytes: Callable[[int, int], bytes]) -> None:
    image = png_bytes(8, 4)
    uploaded = _upload(client, "tiny.png", image)
    assert uploaded.status_code == 200
    card = uploaded.json()
    assert card["object"] == "file" and card["bytes"] == len(image) and card["filename"] == "tiny.png"
    assert (
        card["purpose"] == "general"
        and card["access_policy"] == "private"
        and isinstance(card["created_at"], int)
    )
    assert client.get(f"/files/{card['id']}").json() == card
    assert card in client.get("/files").json()["data"]
    content = client.get(f"/files/{card['id']}/content", headers={"Accept": "application/jpg"})
    assert content.content == image and content.headers["content-type"] == "image/png"
    deleted = client.post(f"/files/{card['id']}/delete", files={"file": ("x", b"x")})
    assert deleted.json() == {"id": card["id"], "object": "file", "deleted": True}
    assert client.get(f"/files/{card['id']}").status_code == 404


def test_only_images_are_stored(client: httpx.Client) -> None:
    assert _upload(client, "notes.txt", b"hello", "text/plain").status_code == 422


def test_image_answer_describes_the_attachment(
    client: httpx.Client, png_bytes: Callable[[int, int], bytes], jpeg_bytes: Callable[[int, int], bytes]
) -> None:
    png = _upload(client, "chart.png", png_bytes(64, 32)).json()
    jpeg = _upload(client, "photo.jpg", jpeg_bytes(640, 480), "image/jpeg").json()
    for card, expected in ((png, "PNG of 64×32 pixels"), (jpeg, "JPEG of 640×480 pixels")):
        messages = [_user("What is on this picture?", attachments=[card["id"]])]
        response = _chat(client, messages, model="GigaChat-2-Pro")
        content = response.json()["choices"][0]["message"]["content"]
        assert card["filename"] in content and expected in content and f"{card['bytes']} bytes" in content
    russian = _chat(client, [_user("Что на картинке?", attachments=[jpeg["id"]])], model="GigaChat-2-Max")
    assert "640×480" in russian.json()["choices"][0]["message"]["content"]


def test_attachment_limits(client: httpx.Client, png_bytes: Callable[[int, int], bytes]) -> None:
    ids = [_upload(client, f"{i}.png", png_bytes(1 + i, 1)).json()["id"] for i in range(11)]
    pro = {"model": "GigaChat-2-Pro"}
    assert _chat(client, [_user("look", attachments=ids[:1])], model="GigaChat-2").status_code == 422
    assert _chat(client, [_user("look", attachments=ids[:2])], **pro).status_code == 422
    ten = [_user(f"look {i}", attachments=[file_id]) for i, file_id in enumerate(ids[:10])]
    assert _chat(client, ten, **pro).status_code == 200
    eleven = [_user(f"look {i}", attachments=[file_id]) for i, file_id in enumerate(ids)]
    assert _chat(client, eleven, **pro).status_code == 422
    missing = _chat(client, [_user("look", attachments=["00000000-0000-4000-8000-000000000000"])], **pro)
    assert missing.status_code == 404 and missing.json()["status"] == 404
