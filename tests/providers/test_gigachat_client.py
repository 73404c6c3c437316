"""GigaChat clients over real HTTP: the emulator for the protocol, a raw stub server for broken answers.

Auth (OAuth, /token, pre-issued, 401 recovery, no stampede), TLS, error mapping, secrets, and the provider.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from pipeline.config import GigaChatSettings, Secret
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
from pipeline.providers.base import EmbeddingProvider
from pipeline.providers.gigachat import AsyncGigaChatClient, GigaChatClient, GigaChatEmbeddingProvider
from pipeline.records import ModelSpec

EMBED_SPEC = ModelSpec(name="Embeddings", provider="gigachat", kind="embed", max_input_tokens=512, dimension=1024)


def _oauth_count(emu: Any) -> int:
    return int(emu.stats()["by_path"].get(_path(emu.auth_url), 0))


def _path(url: str) -> str:
    return httpx.URL(url).path


def _expire_tokens(emu: Any) -> None:
    emu.expire_tokens()


@pytest.fixture
def profile_emulator() -> Iterator[Any]:
    """Start an emulator with a given profile (and TLS) for one test; closed after it."""
    from contextlib import ExitStack

    from pipeline.emulator import EmulatorProfile, start_emulator

    with ExitStack() as stack:
        def start(tls: tuple[str, str] | None = None, **kw: Any) -> Any:
            return stack.enter_context(start_emulator(EmulatorProfile(**kw), tls=tls))

        yield start


# ---------------------------------------------------------------- endpoints


def test_models_and_unknown_model(settings: GigaChatSettings) -> None:
    with GigaChatClient(settings) as client:
        ids = {m.id for m in client.get_models()}
        assert "Embeddings" in ids
        assert client.get_model("Embeddings").id == "Embeddings"
        with pytest.raises(BadRequestError) as info:
            client.get_model("NoSuchModel")
        err = info.value
        assert err.status == 404 and "/models/NoSuchModel" in str(err) and "No such model" in str(err)
        with pytest.raises(BadRequestError, match="/embeddings: HTTP 404: No such model"):
            client.embeddings(["x"], "NoSuchModel")
        with pytest.raises(BadRequestError, match="/chat/completions: HTTP 404: No such model"):
            client.chat([{"role": "user", "content": "hi"}], model="NoSuchModel")


def test_embeddings_sync_and_async_agree(settings: GigaChatSettings) -> None:
    texts = ["First text", "Второй текст", "third"]
    with GigaChatClient(settings) as client:
        result = client.embeddings(texts, "Embeddings")
        assert client.embeddings([], "Embeddings").vectors.shape == (0, 0)

    async def run() -> Any:
        async with AsyncGigaChatClient(settings) as client:
            return await client.embeddings(texts, "Embeddings")

    again = asyncio.run(run())
    assert result.vectors.shape == (3, 1024) and result.vectors.dtype == np.float32
    assert len(result.tokens) == 3 and all(t > 0 for t in result.tokens)
    np.testing.assert_array_equal(result.vectors, again.vectors)


def test_tokens_count_and_balance(settings: GigaChatSettings) -> None:
    with GigaChatClient(settings) as client:
        counts = client.tokens_count(["Hello, world!", "First text"], "GigaChat")
        assert len(counts) == 2 and all(c > 0 for c in counts)
        try:
            balance = client.get_balance()
        except AuthError as e:  # pay-as-you-go accounts get 403
            assert e.status == 403
        else:
            assert all(isinstance(v, float) for v in balance.values())


def test_upload_file(settings: GigaChatSettings, tmp_path: Path, png: bytes) -> None:
    path = tmp_path / "pic.png"
    path.write_bytes(png)
    with GigaChatClient(settings) as client:
        assert client.upload_file(path) != client.upload_file(png, "pic.png")
        with pytest.raises(BadRequestError, match="cannot read"):
            client.upload_file(tmp_path / "missing.png")


def test_temperature_zero_is_sent_and_refused_by_the_server(settings: GigaChatSettings) -> None:
    with GigaChatClient(settings) as client, pytest.raises(BadRequestError) as info:
        client.chat([{"role": "user", "content": "hi"}], temperature=0)
    assert info.value.status == 422 and "temperature" in str(info.value)


# ---------------------------------------------------------------- auth


def test_wrong_credentials_is_an_auth_error_without_secrets(settings_for: Any, emulator: Any) -> None:
    wrong = "V1JPTkctQ1JFREVOVElBTFMtWFla"
    with GigaChatClient(settings_for(emulator, credentials=Secret(wrong))) as client, \
            pytest.raises(AuthError) as info:
        client.get_models()
    err = info.value
    assert err.status == 401 and _path(emulator.auth_url) in str(err)
    assert wrong not in str(err) + repr(err) + repr(err.args)


def test_expired_token_mid_run_recovers_with_one_refresh(settings_for: Any, emulator: Any) -> None:
    with GigaChatClient(settings_for(emulator)) as client:
        client.embeddings(["a"], "Embeddings")
        emulator.reset_stats()
        _expire_tokens(emulator)
        assert client.embeddings(["b"], "Embeddings").vectors.shape == (1, 1024)
        stats = emulator.stats()
    assert _oauth_count(emulator) == 1
    assert stats["status_counts"].get("401", stats["status_counts"].get(401)) == 1


def test_fifty_concurrent_calls_make_one_token_request(settings_for: Any, emulator: Any) -> None:
    async def run() -> None:
        async with AsyncGigaChatClient(settings_for(emulator)) as client:
            emulator.reset_stats()
            results = await asyncio.gather(*(client.embeddings([f"t{i}"], "Embeddings") for i in range(50)))
            assert all(r.vectors.shape == (1, 1024) for r in results)
            assert _oauth_count(emulator) == 1
            _expire_tokens(emulator)  # every cached token is now refused: still one refresh for all 50
            await asyncio.gather(*(client.embeddings([f"u{i}"], "Embeddings") for i in range(50)))
            assert _oauth_count(emulator) == 2

    asyncio.run(run())


def test_threads_share_one_token_request(settings_for: Any, emulator: Any) -> None:
    with GigaChatClient(settings_for(emulator)) as client:
        emulator.reset_stats()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                client.embeddings(["x"], "Embeddings")
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and _oauth_count(emulator) == 1


def test_user_password_auth(settings_for: Any, profile_emulator: Any) -> None:
    emu = profile_emulator(user="alice", password="s3cret-pass")
    settings = settings_for(emu, credentials=None, user="alice", password=Secret("s3cret-pass"))
    with GigaChatClient(settings) as client:
        assert client.embeddings(["x"], "Embeddings").vectors.shape == (1, 1024)
    assert emu.stats()["by_path"].get(_path(emu.base_url) + "/token") == 1
    bad = settings_for(emu, credentials=None, user="alice", password=Secret("wrong-pass"))
    with GigaChatClient(bad) as client, pytest.raises(AuthError) as info:
        client.get_models()
    assert "wrong-pass" not in str(info.value)


def test_preissued_token(settings_for: Any, emulator: Any) -> None:
    with GigaChatClient(settings_for(emulator)) as client:
        client.get_models()
        token = client.auth.current()
        assert token is not None
        issued = token.value
    emulator.reset_stats()
    only_token = settings_for(emulator, credentials=None, access_token=issued)
    with GigaChatClient(only_token) as client:
        assert client.get_models()
        assert _oauth_count(emulator) == 0
        _expire_tokens(emulator)
        with pytest.raises(AuthError, match="no credentials are set") as info:
            client.get_models()
        assert issued.get() not in str(info.value)
    with GigaChatClient(settings_for(emulator, access_token=issued)) as client:
        assert client.get_models()  # refused token, then OAuth with the credentials
        assert _oauth_count(emulator) == 1


def test_second_401_is_an_auth_error(stub: Any) -> None:
    stub.routes[("GET", "/api/v1/models")] = (401, {}, b'{"status": 401, "message": "Unauthorized"}', None)
    with GigaChatClient(stub.settings()) as client, pytest.raises(AuthError, match="HTTP 401.*Unauthorized"):
        client.get_models()
    assert stub.hits == {"/oauth": 2, "/api/v1/models": 2}


# ---------------------------------------------------------------- failures


def test_server_faults_map_to_our_errors(settings_for: Any, profile_emulator: Any) -> None:
    emu = profile_emulator(max_texts_per_request=2)
    with GigaChatClient(settings_for(emu)) as client:
        with pytest.raises(RequestTooLargeError) as too_large:
            client.embeddings(["a", "b", "c"], "Embeddings")
        assert too_large.value.status == 413 and "/embeddings" in str(too_large.value)
    emu = profile_emulator(error_rate=1.0)
    with GigaChatClient(settings_for(emu)) as client, pytest.raises(ServerError) as server:
        client.embeddings(["a"], "Embeddings")
    assert server.value.status == 500 and server.value.retryable


def test_rate_limit_carries_retry_after(settings_for: Any, profile_emulator: Any) -> None:
    emu = profile_emulator(rps=0.5)
    with GigaChatClient(settings_for(emu)) as client, pytest.raises(RateLimitError) as info:
        for _ in range(5):
            client.get_models()
    err = info.value
    assert err.status == 429 and err.retryable
    assert err.retry_after is None or err.retry_after >= 0


def test_wrong_number_of_vectors_is_refused(settings_for: Any, profile_emulator: Any) -> None:
    emu = profile_emulator(wrong_count_rate=1.0)
    with GigaChatClient(settings_for(emu)) as client, pytest.raises(BadResponseError, match="2 vectors for 3 texts"):
        client.embeddings(["a", "b", "c"], "Embeddings")


def test_connection_cut_mid_response_is_a_network_error(settings_for: Any, profile_emulator: Any) -> None:
    emu = profile_emulator(drop_rate=1.0)

    async def run() -> None:
        async with AsyncGigaChatClient(settings_for(emu)) as client:
            await client.embeddings(["a", "b"], "Embeddings")

    with pytest.raises(NetworkError) as info:
        asyncio.run(run())
    assert info.value.retryable and "/embeddings" in str(info.value)


def test_stream_cut_is_a_network_error(settings_for: Any, profile_emulator: Any) -> None:
    emu = profile_emulator(stream_break_after=1)
    with GigaChatClient(settings_for(emu)) as client, \
            pytest.raises(NetworkError, match="stream ended before completion"):
        list(client.stream([{"role": "user", "content": "count to ten"}]))


@pytest.mark.parametrize(("route", "cls", "fragment"), [
    ((200, {"Content-Type": "text/html"}, b"<html>Gateway</html>", None), BadResponseError, "invalid or truncated"),
    ((200, {"Content-Type": "application/json"}, b'{"object": "list", "data": [{"index": 0, "embe', None),
     BadResponseError, "truncated JSON"),
    ((200, {"Content-Type": "application/json"}, b'{"object": "list", "data": [{"index": 0, "embedding": [1]}]}', 20),
     NetworkError, "/embeddings"),
    ((200, {"Content-Type": "application/json"}, b"", None), BadResponseError, "empty body"),
    ((502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>", None), ServerError, "HTTP 502"),
    ((429, {"Retry-After": "3"}, b'{"status": 429, "message": "Too many requests"}', None), RateLimitError, "3"),
])
def test_broken_answers(stub: Any, route: Any, cls: type, fragment: str) -> None:
    stub.routes[("POST", "/api/v1/embeddings")] = route

    async def run() -> None:
        async with AsyncGigaChatClient(stub.settings()) as client:
            await client.embeddings(["a"], "Embeddings")

    with pytest.raises(cls) as info:
        asyncio.run(run())
    assert fragment in str(info.value)
    if isinstance(info.value, RateLimitError):
        assert info.value.retry_after == 3.0


def test_stub_stream_without_done_or_finish(stub: Any) -> None:
    body = b'data: {"choices":[{"delta":{"content":"1, 2","role":"assistant"},"index":0}]}\n\n'
    stub.routes[("POST", "/api/v1/chat/completions")] = (200, {"Content-Type": "text/event-stream"}, body, None)
    with GigaChatClient(stub.settings()) as client:
        stream = client.stream([{"role": "user", "content": "x"}])
        with pytest.raises(NetworkError, match="stream ended before completion"):
            list(stream)
    stub.routes[("POST", "/api/v1/chat/completions")] = (200, {"Content-Type": "application/json"}, b"{}", None)
    with GigaChatClient(stub.settings()) as client, pytest.raises(BadResponseError, match="text/event-stream"):
        list(client.stream([{"role": "user", "content": "x"}]))


def test_timeout_is_a_network_error(settings_for: Any, profile_emulator: Any) -> None:
    emu = profile_emulator(base_latency_ms=600)
    with GigaChatClient(settings_for(emu, timeout_s=0.2)) as client, \
            pytest.raises(NetworkError, match="no answer within 0.2 s") as info:
        client.embeddings(["x"], "Embeddings")
    assert info.value.retryable


def test_unreachable_host_is_a_network_error() -> None:
    settings = GigaChatSettings(base_url="http://127.0.0.1:9/api/v1", auth_url="http://127.0.0.1:9/oauth",
                                credentials=Secret("eA=="), timeout_s=2)
    with GigaChatClient(settings) as client, pytest.raises(NetworkError, match="/oauth"):
        client.get_models()


# ---------------------------------------------------------------- TLS


@pytest.fixture
def tls_files(tls_ca: Any, tmp_path: Path) -> dict[str, str]:
    server_cert = tls_ca.issue_cert("127.0.0.1", "localhost")
    files = {"cert": tmp_path / "server.pem", "key": tmp_path / "server.key", "ca": tmp_path / "ca.pem"}
    server_cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    tls_ca.cert_pem.write_to_path(str(files["ca"]))
    return {k: str(v) for k, v in files.items()}


def test_tls_verified_with_a_ca_bundle(settings_for: Any, profile_emulator: Any, tls_files: dict[str, str],
                                       caplog: pytest.LogCaptureFixture) -> None:
    emu = profile_emulator(tls=(tls_files["cert"], tls_files["key"]))
    assert emu.base_url.startswith("https://") and emu.auth_url.startswith("https://")
    with GigaChatClient(settings_for(emu, ca_bundle_file=tls_files["ca"])) as client:
        assert client.embeddings(["x"], "Embeddings").vectors.shape == (1, 1024)
    with GigaChatClient(settings_for(emu)) as client, pytest.raises(NetworkError) as info:
        client.get_models()
    assert "certificate verification failed" in str(info.value) and not info.value.retryable
    with caplog.at_level(logging.WARNING, logger="pipeline.gigachat"), \
            GigaChatClient(settings_for(emu, verify_ssl_certs=False)) as client:
        assert client.get_models()
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- secrets


def test_no_secret_in_reprs_errors_or_logs(settings_for: Any, emulator: Any, caplog: pytest.LogCaptureFixture) -> None:
    secret_creds = "RElTVElOQ1RJVkUtQ1JFREVOVElBTFMtNzc3"
    good = settings_for(emulator)
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        with GigaChatClient(good) as client:
            client.get_models()
            token = client.auth.current()
            assert token is not None
            seen += [repr(client), str(client), repr(client.auth), repr(token), repr(good), str(good)]
        secrets = [emulator.credentials, token.value.get()]
        for settings in (settings_for(emulator, credentials=Secret(secret_creds)),
                         settings_for(emulator, credentials=None, access_token=Secret(secret_creds)),
                         settings_for(emulator, credentials=None, user="u", password=Secret(secret_creds))):
            with GigaChatClient(settings) as client:
                seen += [repr(client), repr(settings), str(settings)]
                with pytest.raises(ProviderError) as info:
                    client.get_models()
                seen += [str(info.value), repr(info.value), repr(info.value.args), info.value.server_message]
        provider = GigaChatEmbeddingProvider(EMBED_SPEC, settings_for(emulator, credentials=Secret(secret_creds)))
        seen.append(repr(provider))
    seen += [r.getMessage() for r in caplog.records]
    text = "\n".join(seen)
    for secret in [*secrets, secret_creds]:
        assert secret not in text


# ---------------------------------------------------------------- provider


def test_provider_embeds_and_counts(settings: GigaChatSettings) -> None:
    spec = ModelSpec(name="Embeddings", provider="gigachat", kind="embed", max_input_tokens=512, dimension=1024,
                     query_instruction="query: ")
    provider = GigaChatEmbeddingProvider(spec, settings)
    assert isinstance(provider, EmbeddingProvider) and provider.name == "gigachat"

    async def run() -> tuple[np.ndarray, np.ndarray, list[int]]:
        passages = await provider.embed_batch(["alpha", "beta"])
        queries = await provider.embed_batch(["alpha"], is_query=True)
        counts = await provider.count_tokens(["alpha", "beta"])
        await provider.aclose()
        return passages, queries, counts

    passages, queries, counts = asyncio.run(run())
    assert passages.shape == (2, 1024) and passages.dtype == np.float32 and len(counts) == 2
    assert not np.allclose(passages[0], queries[0])  # the query carried its instruction
    assert provider.tokens_used > 0 and len(provider.last_usage_tokens) == 1
    np.testing.assert_array_equal(provider.embed_sync(["alpha"], is_query=True), queries)
    assert provider.embed_sync([]).shape == (0, 1024)
    provider.close()


def test_provider_refuses_a_wrong_dimension(settings: GigaChatSettings) -> None:
    spec = ModelSpec(name="Embeddings", provider="gigachat", kind="embed", max_input_tokens=512, dimension=768)
    provider = GigaChatEmbeddingProvider(spec, settings)
    with pytest.raises(BadResponseError, match="1024-dimensional vectors, the registry says 768"):
        provider.embed_sync(["x"])
    provider.close()


def test_provider_survives_a_new_event_loop(settings: GigaChatSettings) -> None:
    provider = GigaChatEmbeddingProvider(EMBED_SPEC, settings)
    for _ in range(2):  # each asyncio.run is a new loop: the client and its lock must follow
        assert asyncio.run(provider.embed_batch(["x"])).shape == (1, 1024)
    assert provider._auth.refreshes == 1
    asyncio.run(provider.aclose())
