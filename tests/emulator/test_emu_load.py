"""Emulator load shaping: rate and concurrency limits, latency, injected errors, drops, short counts, counters.

Real HTTP against emulators on 127.0.0.1; concurrency comes from an asyncio httpx client.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest

from pipeline.emulator import RunningEmulator
from pipeline.emulator import app as app_module

StartEmulator = Callable[..., RunningEmulator]  # the make_emulator fixture
MakeClient = Callable[[RunningEmulator], httpx.Client]  # the make_client fixture


async def _parallel_gets(base_url: str, token: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as client:
        return await asyncio.gather(*(client.get("/models") for _ in range(count)))


def test_rate_limit_answers_429_with_retry_after(
    make_emulator: StartEmulator, make_client: MakeClient
) -> None:
    emu = make_emulator(rps=5)
    client = make_client(emu)  # its OAuth call takes no token from the bucket: a burst of 5 is left
    statuses = [client.get("/models") for _ in range(10)]
    limited = [r for r in statuses if r.status_code == 429]
    assert 5 <= len(statuses) - len(limited) <= 7
    assert limited and all(0 < float(r.headers["retry-after"]) <= 1 for r in limited)
    assert limited[0].json()["status"] == 429
    time.sleep(float(limited[-1].headers["retry-after"]) + 0.05)
    assert client.get("/models").status_code == 200


def test_concurrency_cap_answers_429_at_once(
    make_emulator: StartEmulator, get_token: Callable[..., str]
) -> None:
    emu = make_emulator(max_concurrency=2, base_latency_ms=300)
    token = get_token(emu)
    emu.reset_stats()
    started = time.monotonic()
    responses = asyncio.run(_parallel_gets(emu.base_url, token, 6))
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429, 429, 429]
    assert time.monotonic() - started < 1.0
    stats = emu.stats()
    assert stats["peak_in_flight"] == 2 and stats["status_counts"] == {"200": 2, "429": 4}


def test_latency_is_concurrent(make_emulator: StartEmulator, get_token: Callable[..., str]) -> None:
    emu = make_emulator(base_latency_ms=250, latency_jitter_ms=50)
    token = get_token(emu)
    started = time.monotonic()
    responses = asyncio.run(_parallel_gets(emu.base_url, token, 10))
    elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in responses)
    assert 0.25 <= elapsed < 1.0  # ten sleeps of 250-300 ms overlap instead of adding up
    assert emu.stats()["peak_in_flight"] == 10


def test_per_text_latency(make_emulator: StartEmulator, make_client: MakeClient) -> None:
    client = make_client(make_emulator(per_text_latency_ms=20))
    started = time.monotonic()
    assert client.post("/embeddings", json={"model": "Embeddings", "input": ["x"] * 10}).status_code == 200
    assert time.monotonic() - started >= 0.2


def _words(count: int, seed: int) -> str:
    """`count` pseudo-words, so that a test's texts are as long and varied as real chunks."""
    return " ".join(f"w{(seed * 7919 + i * 104729) % 5003}x{i % 17}" for i in range(count))


async def _oauth_calls(emu: RunningEmulator, count: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Basic {emu.credentials}"}
    async with httpx.AsyncClient() as client:
        return await asyncio.gather(
            *(
                client.post(
                    emu.auth_url,
                    headers={**headers, "RqUID": str(uuid.uuid4())},
                    data={"scope": "GIGACHAT_API_PERS"},
                )
                for _ in range(count)
            )
        )


def test_oauth_is_exempt_from_the_api_limits(make_emulator: StartEmulator) -> None:
    # The real OAuth host is another service than the API: token requests use none of its slots or rate.
    emu = make_emulator(rps=2, max_concurrency=1, base_latency_ms=200)
    started = time.monotonic()
    tokens = asyncio.run(_oauth_calls(emu, 5))  # five at once: over both the cap and the burst of 2
    assert [r.status_code for r in tokens] == [200] * 5
    assert time.monotonic() - started < 0.9  # they overlapped: nothing queued them behind the cap
    token = tokens[0].json()["access_token"]

    async def embed_among_token_fetches() -> list[httpx.Response]:
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=emu.base_url, headers=auth) as client:
            body = {"model": "Embeddings", "input": ["a", "b"]}
            first, *fetched = await asyncio.gather(
                client.post("/embeddings", json=body), _oauth_calls(emu, 3)
            )
            return [first, *fetched[0], await client.post("/embeddings", json=body)]

    responses = asyncio.run(embed_among_token_fetches())
    # The two embeddings calls are the whole burst the bucket allows (2), eight token fetches notwithstanding.
    assert [r.status_code for r in responses] == [200] * 5
    stats = emu.stats()
    assert stats["requests"] == 10 and stats["status_counts"] == {"200": 10}
    assert stats["by_path"] == {"/api/v2/oauth": 8, "/api/v1/embeddings": 2}
    assert stats["tokens_issued"] == 8 and stats["peak_in_flight"] == 1 and stats["in_flight"] == 0


def test_oauth_gets_no_injected_errors_but_token_stays_limited(
    http: httpx.Client, make_emulator: StartEmulator, get_token: Callable[..., str]
) -> None:
    emu = make_emulator(error_rate=1.0, rps=0.5)
    token = get_token(emu)  # asserts a 200 although every REST call fails
    assert get_token(emu) != token  # and again: the bucket of one was not touched
    login = (emu.profile.user, emu.profile.password)
    assert (
        http.post(f"{emu.base_url}/token", auth=login).status_code == 200
    )  # on the API host: takes the token
    refused = http.post(f"{emu.base_url}/token", auth=login)
    assert refused.status_code == 429 and float(refused.headers["retry-after"]) > 0
    assert emu.stats()["errors_injected"] == 0


def test_embeddings_latency_includes_compute(make_emulator: StartEmulator, make_client: MakeClient) -> None:
    # 100 texts at 2560-d take 10-20 ms to compute and serialise: inside the 300 ms, not on top of it.
    client = make_client(make_emulator(per_text_latency_ms=3))
    texts = [_words(150, seed) for seed in range(100)]
    assert (
        client.post("/embeddings", json={"model": "EmbeddingsGigaR", "input": texts[:1]}).status_code == 200
    )
    round_trips = []
    for _ in range(3):
        started = time.monotonic()
        response = client.post("/embeddings", json={"model": "EmbeddingsGigaR", "input": texts})
        round_trips.append(time.monotonic() - started)
        assert response.status_code == 200
    assert len(response.json()["data"]) == 100
    assert min(round_trips) >= 0.3  # never early
    assert min(round_trips) < 0.45  # the best of three, so that one hiccup of a busy machine does not fail it


def test_slow_compute_is_absorbed_by_the_latency(
    make_emulator: StartEmulator, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = app_module.embed_texts

    def slow_embed_texts(model: str, texts: list[str]) -> object:
        time.sleep(0.25)  # a server that needs 250 ms of its 300 ms per-text budget
        return real(model, texts)

    monkeypatch.setattr(app_module, "embed_texts", slow_embed_texts)
    emu = make_emulator(base_latency_ms=100, per_text_latency_ms=3)  # 100 + 3 x 100 = 400 ms
    token = make_client(emu).headers["authorization"]

    async def embed_and_list_models() -> tuple[float, float]:
        async with httpx.AsyncClient(base_url=emu.base_url, headers={"Authorization": token}) as client:

            async def timed(call: Awaitable[httpx.Response], delay_s: float = 0.0) -> float:
                await asyncio.sleep(delay_s)
                started = time.monotonic()
                assert (await call).status_code == 200
                return time.monotonic() - started

            body = {"model": "Embeddings", "input": ["text"] * 100}
            # /models arrives 50 ms in, so that its own 100 ms end while the vectors are computed (100-350 ms).
            return tuple(
                await asyncio.gather(
                    timed(client.post("/embeddings", json=body)), timed(client.get("/models"), 0.05)
                )
            )

    embedding_s, models_s = asyncio.run(embed_and_list_models())
    assert 0.4 <= embedding_s < 0.55  # 400 ms, not 400 + 250
    assert models_s < 0.2  # 100 ms: the compute ran off the event loop, so the call beside it did not wait


def _failing_calls(make_emulator: StartEmulator, make_client: MakeClient, seed: int) -> list[int]:
    client = make_client(make_emulator(error_rate=0.25, seed=seed))
    responses = [client.get("/models") for _ in range(200)]
    for response in responses:
        if response.status_code == 500:
            assert response.json() == {"status": 500, "message": "Internal Server Error"}
    return [i for i, r in enumerate(responses) if r.status_code == 500]


def test_error_rate_is_seeded(make_emulator: StartEmulator, make_client: MakeClient) -> None:
    first = _failing_calls(make_emulator, make_client, seed=7)
    assert 25 <= len(first) <= 75  # 25 % of 200, give or take
    assert _failing_calls(make_emulator, make_client, seed=7) == first
    assert _failing_calls(make_emulator, make_client, seed=8) != first


def test_drop_rate_cuts_embedding_responses(make_emulator: StartEmulator, make_client: MakeClient) -> None:
    emu = make_emulator(drop_rate=1.0)
    client = make_client(emu)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/embeddings", json={"model": "Embeddings", "input": ["a", "b"]})
    assert client.get("/models").status_code == 200  # only embeddings are cut
    assert emu.stats()["connections_dropped"] == 1


def test_drop_rate_fraction(make_emulator: StartEmulator, make_client: MakeClient) -> None:
    emu = make_emulator(drop_rate=0.3, seed=1)
    client = make_client(emu)
    dropped = 0
    for _ in range(40):
        try:
            client.post("/embeddings", json={"model": "Embeddings", "input": ["a"]})
        except httpx.RemoteProtocolError:
            dropped += 1
    assert 4 <= dropped <= 22
    assert emu.stats()["connections_dropped"] == dropped


def test_wrong_count_rate_omits_a_vector(make_emulator: StartEmulator, make_client: MakeClient) -> None:
    client = make_client(make_emulator(wrong_count_rate=1.0))
    body = client.post("/embeddings", json={"model": "Embeddings", "input": ["a", "b", "c"]}).json()
    assert [item["index"] for item in body["data"]] == [0, 1]


def test_stats_count_and_reset(
    http: httpx.Client, make_emulator: StartEmulator, make_client: MakeClient
) -> None:
    emu = make_emulator()
    client = make_client(emu)
    before = time.time()
    client.post("/embeddings", json={"model": "Embeddings", "input": ["a", "b", "c"]})
    client.get("/models/nope")
    client.get("/files/abc")
    stats = http.get(f"{emu.root_url}/_stats").json()
    after = time.time()  # not before: the server marks a call done just after its client has the answer
    assert stats == emu.stats()
    # when the API calls (not the token's) began and ended, for a benchmark to split a run's wall time
    assert before < stats["first_call_at"] < stats["last_call_done_at"] <= after
    assert stats["requests"] == 4 and stats["tokens_issued"] == 1 and stats["texts_embedded"] == 3
    assert stats["status_counts"] == {"200": 2, "404": 2}
    assert stats["by_path"] == {
        "/api/v2/oauth": 1,
        "/api/v1/embeddings": 1,
        "/api/v1/models/{model_id}": 1,
        "/api/v1/files/{file_id}": 1,
    }
    assert stats["in_flight"] == 0 and stats["peak_in_flight"] == 1
    assert http.post(f"{emu.root_url}/_stats/reset").status_code == 200
    assert emu.stats()["requests"] == 0 and emu.stats()["status_counts"] == {}


def test_unknown_paths_answer_json(http: httpx.Client, emu: RunningEmulator) -> None:
    response = http.get(f"{emu.base_url}/no/such/path")
    assert response.status_code == 404 and response.json()["status"] == 404
    assert http.delete(f"{emu.base_url}/models").status_code == 405
