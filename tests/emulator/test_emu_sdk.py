"""Sber's own gigachat SDK (0.2.3) against the emulator: the judge of the emulator's faithfulness.

Real HTTP and HTTPS on 127.0.0.1; the SDK fetches its own tokens from the emulator's OAuth endpoint.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator

import gigachat
import pytest
from gigachat.exceptions import (
    AuthenticationError,
    LengthFinishReasonError,
    NotFoundError,
    RateLimitError,
    RequestEntityTooLargeError,
    UnprocessableEntityError,
)
from gigachat.models import Chat, Function, FunctionParameters, Messages, MessagesRole
from pydantic import BaseModel

from pipeline.emulator import EmulatorProfile, RunningEmulator, start_emulator

StartEmulator = Callable[..., RunningEmulator]  # the make_emulator fixture


def _sdk(emu: RunningEmulator, **extra: object) -> gigachat.GigaChat:
    settings: dict[str, object] = {
        "base_url": emu.base_url,
        "auth_url": emu.auth_url,
        "credentials": emu.credentials,
        "scope": "GIGACHAT_API_PERS",
        "model": "GigaChat-2",
    }
    return gigachat.GigaChat(**(settings | extra))  # type: ignore[arg-type]


@pytest.fixture
def sdk(emu: RunningEmulator) -> Iterator[gigachat.GigaChat]:
    with _sdk(emu) as client:
        yield client


def test_sdk_models_embeddings_tokens(sdk: gigachat.GigaChat) -> None:
    models = sdk.get_models()
    assert {"GigaChat-2", "Embeddings", "EmbeddingsGigaR"} <= {m.id_ for m in models.data}
    assert sdk.get_model("GigaChat-2-Max").id_ == "GigaChat-2-Max"
    with pytest.raises(NotFoundError):
        sdk.get_model("GigaChat-0")
    embeddings = sdk.embeddings(["Привет, мир!", "Hello, world!"], model="EmbeddingsGigaR")
    assert [len(item.embedding) for item in embeddings.data] == [2560, 2560]
    assert embeddings.data[1].usage.prompt_tokens == 5 + 5 and embeddings.model == "EmbeddingsGigaR"
    assert embeddings.x_headers and embeddings.x_headers["x-request-id"]
    assert [t.tokens for t in sdk.tokens_count(["Hello, world!", "First text"])] == [5, 4]
    assert {b.usage for b in sdk.get_balance().balance} == {"GigaChat", "embeddings"}


def test_sdk_chat_and_stream(sdk: gigachat.GigaChat) -> None:
    answer = sdk.chat("Сколько будет два плюс два?")
    assert answer.model == "GigaChat-2:2.0.28.2" and answer.usage.total_tokens > 0
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].finish_reason == "stop"
    chunks = list(sdk.stream("Сколько будет два плюс два?"))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage == answer.usage
    with pytest.raises(UnprocessableEntityError):
        sdk.chat({"messages": [{"role": "user", "content": "hi"}], "temperature": 0})


def test_sdk_function_call_round_trip(sdk: gigachat.GigaChat) -> None:
    weather = Function(
        name="get_weather",
        description="Текущая погода",
        parameters=FunctionParameters.model_validate(
            {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "город"}},
                "required": ["city"],
            }
        ),
    )
    chat = Chat(messages=[Messages(role=MessagesRole.USER, content="Погода в Москве?")], functions=[weather])
    called = sdk.chat(chat)
    message = called.choices[0].message
    assert called.choices[0].finish_reason == "function_call"
    assert message.function_call is not None and message.function_call.name == "get_weather"
    assert message.function_call.arguments == {"city": "Погода в Москве?"}
    chat.messages += [
        message,
        Messages(role=MessagesRole.FUNCTION, name="get_weather", content='{"temp": 18}'),
    ]
    answered = sdk.chat(chat)
    assert answered.choices[0].finish_reason == "stop" and "18" in answered.choices[0].message.content
    streamed = list(sdk.stream(Chat(messages=chat.messages[:1], functions=[weather])))
    assert streamed[0].choices[0].delta.function_call is not None
    assert streamed[0].choices[0].finish_reason == "function_call"


def test_sdk_files_and_vision(sdk: gigachat.GigaChat, png_bytes: Callable[[int, int], bytes]) -> None:
    image = png_bytes(20, 10)
    uploaded = sdk.upload_file(("dot.png", image, "image/png"))
    assert uploaded.bytes_ == len(image) and uploaded.filename == "dot.png"
    assert sdk.get_file(uploaded.id_).id_ == uploaded.id_
    assert uploaded.id_ in {f.id_ for f in sdk.get_files().data}
    assert base64.b64decode(sdk.get_image(uploaded.id_).content) == image
    chat = {
        "model": "GigaChat-2-Pro",
        "messages": [{"role": "user", "content": "Describe it", "attachments": [uploaded.id_]}],
    }
    assert "20×10" in sdk.chat(chat).choices[0].message.content
    assert sdk.delete_file(uploaded.id_).deleted is True


def test_sdk_structured_and_length_errors(sdk: gigachat.GigaChat) -> None:
    class Verdict(BaseModel):
        answer: str

    with pytest.raises(LengthFinishReasonError):
        sdk.chat_parse(
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}, response_format=Verdict
        )


def test_sdk_refreshes_after_a_401(sdk: gigachat.GigaChat, emu: RunningEmulator) -> None:
    sdk.get_models()
    first = sdk.token
    emu.expire_tokens()
    sdk.get_models()  # the SDK sees a 401, drops the token, fetches a new one and retries once
    assert sdk.token != first


def test_sdk_short_ttl_refetches_before_each_call(make_emulator: StartEmulator) -> None:
    emu = make_emulator(token_ttl_s=30)  # inside the SDK's 60 s buffer, so never "usable"
    with _sdk(emu) as client:
        client.get_models()
        client.get_models()
    assert emu.stats()["tokens_issued"] == 2


def test_sdk_password_auth(emu: RunningEmulator) -> None:
    with gigachat.GigaChat(
        base_url=emu.base_url, user=emu.profile.user, password=emu.profile.password
    ) as client:
        assert client.get_models().data
    with (
        gigachat.GigaChat(base_url=emu.base_url, user=emu.profile.user, password="wrong") as client,
        pytest.raises(AuthenticationError),
    ):
        client.get_models()


def test_sdk_limits_map_to_its_errors(make_emulator: StartEmulator) -> None:
    emu = make_emulator(rps=2, max_texts_per_request=2)
    with _sdk(emu) as client:
        with pytest.raises(RequestEntityTooLargeError):
            client.embeddings(["a", "b", "c"])
        with pytest.raises(RateLimitError) as caught:
            for _ in range(5):
                client.get_models()
    assert caught.value.retry_after > 0


def test_sdk_async_client(emu: RunningEmulator) -> None:
    async def run() -> tuple[int, str]:
        async with _sdk(emu) as client:
            vectors = await client.aembeddings(["one", "two", "three"])
            chunks = [c async for c in client.astream("async hello")]
        return len(vectors.data), "".join(c.choices[0].delta.content or "" for c in chunks)

    count, text = asyncio.run(run())
    assert count == 3 and "async hello" in text


@pytest.mark.filterwarnings(
    "ignore:.*verify=<str>.*:DeprecationWarning"
)  # the SDK passes verify=<path> to httpx
def test_sdk_over_tls_with_ca_bundle(tls_files: tuple[str, str, str]) -> None:
    cert, key, bundle = tls_files
    with start_emulator(EmulatorProfile(), tls=(cert, key)) as emu:
        assert emu.base_url.startswith("https://")
        with _sdk(emu, ca_bundle_file=bundle) as client:
            assert client.embeddings(["secure"]).data[0].embedding
            assert client.chat("hello over TLS").choices[0].message.content
            assert [c for c in client.stream("stream over TLS")][-1].choices[0].finish_reason == "stop"
