"""The seed's feature table (litellm's GigaChat page), one test per row, over real HTTP to the emulator.

Rows: chat completion, streaming, async, function calling, structured output, image input, embeddings.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import BadRequestError, ContentRefusedError
from pipeline.providers import embedding_provider
from pipeline.providers.gigachat import (
    AsyncGigaChatClient,
    ChatRequest,
    GigaChatClient,
    GigaChatEmbeddingProvider,
    Image,
)

HELLO = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello from the pipeline!"}]
WEATHER = {"name": "get_weather", "description": "Get weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                          "required": ["city"]}}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


def _sent(emu: Any) -> int:
    return int(emu.stats()["requests"])


def test_chat_completion(settings: Any) -> None:
    with GigaChatClient(settings) as client:
        reply = client.chat(HELLO, model="GigaChat-2")
        again = client.chat(ChatRequest(HELLO, model="GigaChat-2", max_tokens=200))
        refused = client.chat([{"role": "user", "content": "Tell me about BLACKLISTED_TOPIC"}])
    assert reply.content and reply.role == "assistant" and reply.finish_reason == "stop"
    assert reply.model.startswith("GigaChat-2") and reply.usage.total_tokens > 0
    assert again.content == reply.content
    assert refused.refused and refused.finish_reason == "blacklist"  # returned, the caller decides
    with pytest.raises(ContentRefusedError):
        refused.raise_for_refusal()


def test_streaming(settings: Any) -> None:
    with GigaChatClient(settings) as client:
        whole = client.chat(HELLO, model="GigaChat-2")
        deltas = list(client.stream(HELLO, model="GigaChat-2"))
    assert len(deltas) > 1 and deltas[0].role == "assistant"
    assert "".join(d.content for d in deltas) == whole.content
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage is not None


def test_async(settings: Any) -> None:
    async def run() -> tuple[Any, str, Any, dict[str, Any]]:
        async with AsyncGigaChatClient(settings) as client:
            async def streamed() -> str:
                return "".join([d.content async for d in client.astream(HELLO, model="GigaChat-2")])

            return await asyncio.gather(
                client.chat(HELLO, model="GigaChat-2"), streamed(),
                client.embeddings(["Hello world", "How are you?"]),
                client.chat_structured([{"role": "user", "content": "Extract info: John is 30 years old"}],
                                       PERSON, name="person", model="GigaChat-2-Max"))

    reply, streamed, vectors, person = asyncio.run(run())
    assert reply.content and streamed == reply.content
    assert vectors.vectors.shape == (2, 1024) and person["age"] == 30


def test_function_calling(emulator: Any, settings: Any) -> None:
    ask = [{"role": "user", "content": "What's the weather in Moscow?"}]
    with GigaChatClient(settings) as client:
        call = client.chat(ask, model="GigaChat-2-Max", functions=[WEATHER], function_call="auto")
        assert call.finish_reason == "function_call" and call.function_call is not None
        assert call.function_call.name == "get_weather" and isinstance(call.function_call.arguments["city"], str)
        result = {"role": "function", "name": "get_weather", "content": {"temp": 18, "sky": "clear"}}
        final = client.chat([*ask, call.message(), result], model="GigaChat-2-Max", functions=[WEATHER])
        assert final.finish_reason == "stop" and "18" in final.content
        before = _sent(emulator)
        parallel = {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Moscow"}'}},
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Kazan"}'}}]}
        with pytest.raises(BadRequestError, match="one per turn"):
            client.chat([*ask, parallel], model="GigaChat-2-Max", functions=[WEATHER])
        assert _sent(emulator) == before


def test_structured_output(settings: Any) -> None:
    messages = [{"role": "user", "content": "Extract info: John is 30 years old"}]
    with GigaChatClient(settings) as client:
        person = client.chat_structured(messages, PERSON, name="person", model="GigaChat-2-Max")
        default_name = client.chat_structured(messages, PERSON)
    assert isinstance(person["name"], str) and person["age"] == 30
    assert default_name["age"] == 30


def test_image_input(emulator: Any, settings: Any, stub: Any, tmp_path: Path, png: bytes) -> None:
    path = tmp_path / "red.png"
    path.write_bytes(png)
    stub.routes[("GET", "/red.png")] = (200, {"Content-Type": "image/png"}, png, None)
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    sources: list[Any] = [png, path, str(path), Image(data=png, filename="red.png"), data_url,
                          stub.url + "/red.png"]
    with GigaChatClient(settings) as client:
        for source in sources:
            emulator.reset_stats()
            reply = client.chat([{"role": "user", "content": "What's in this image?", "images": [source]}],
                                model="GigaChat-2-Max")
            assert "PNG of 3×2 pixels" in reply.content
            assert emulator.stats()["by_path"].get("/api/v1/files") == 1
        parts = [{"type": "text", "text": "What's in this image?"},
                 {"type": "image_url", "image_url": {"url": data_url}}]
        assert "PNG of 3×2" in client.chat([{"role": "user", "content": parts}], model="GigaChat-2-Pro").content

        big = tmp_path / "big.png"
        big.write_bytes(png + b"\0" * (15 * 1024 * 1024))
        refused: list[tuple[list[dict[str, Any]], str, str]] = [
            ([{"role": "user", "content": "x", "images": [png, png]}], "GigaChat-2-Max", "1 image per message"),
            ([{"role": "user", "content": "x", "images": [png]}] * 11, "GigaChat-2-Max", "10 images"),
            ([{"role": "user", "content": "x", "images": [png]}], "GigaChat-2-Lite", "does not take images"),
            ([{"role": "user", "content": "x", "images": [big]}], "GigaChat-2-Max", "15 MB"),
            ([{"role": "user", "content": "x", "images": [png]},
              {"role": "user", "content": "y", "images": [big]}], "GigaChat-2-Max", "15 MB"),
        ]
        for messages, model, fragment in refused:
            before = _sent(emulator)
            with pytest.raises(BadRequestError, match=fragment):
                client.chat(messages, model=model)
            assert _sent(emulator) == before, f"a request was sent for {fragment}"


def test_embeddings(emulator: Any, settings: Any, tmp_path: Path) -> None:
    with GigaChatClient(settings) as client:
        result = client.embeddings(["Hello world", "How are you?"], "Embeddings")
    assert result.vectors.shape == (2, 1024) and result.model == "Embeddings"
    assert np.isfinite(result.vectors).all() and len(result.tokens) == 2
    env = {"GIGACHAT_CREDENTIALS": emulator.credentials, "GIGACHAT_BASE_URL": emulator.base_url,
           "GIGACHAT_AUTH_URL": emulator.auth_url, "HOME": str(tmp_path)}
    config = load_config(None, env, out_dir=tmp_path / "out")
    assert config.model == "Embeddings"  # credentials set: GigaChat is chosen over the offline default
    provider = embedding_provider(config.model_spec(), config)
    assert isinstance(provider, GigaChatEmbeddingProvider)
    matrix = asyncio.run(provider.embed_batch(["Hello world"]))
    np.testing.assert_allclose(matrix[0], result.vectors[0], rtol=1e-6)
    asyncio.run(provider.aclose())
    assert load_config(None, {"HOME": str(tmp_path)}, out_dir=tmp_path / "out").model == "e5-small-local"
