"""Emulator load shaping: rate and concurrency limits, latency, injected errors, drops, short counts, counters.

Real HTTP against emulators on 127.0.0.1; concurrency comes from an asyncio httpx client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from pipeline.emulator import RunningEmulator

StartEmulator = Callable[..., RunningEmulator]  # the make_emulator fixture
MakeClient = Callable[[RunningEmulator], httpx.Client]  # the make_client fixture


async def _parallel_gets(base_url: str, token: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as client:
        return await asyncio.gather(*(client.get("/models") for _ in range(count)))


def test_rate_limit_answers_429_with_retry_after(
    make_emulator: StartEmulator, make_client: MakeClient
) -> None:
    emu = make_emulator(rps=5)
    client = make_client(emu)  # the OAuth call takes one token from the bucket too
    statuses = [client.get("/models") for _ in range(10)]
    limited = [r for r in statuses if r.status_code == 429]
    assert 4 <= len(statuses) - len(limited) <= 6
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
    client.post("/embeddings", json={"model": "Embeddings", "input": ["a", "b", "c"]})
    client.get("/models/nope")
    client.get("/files/abc")
    stats = http.get(f"{emu.root_url}/_stats").json()
    assert stats == emu.stats()
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
