"""The emulator's guards: request bodies over max_body_bytes get 413 before they are read, and the admin routes
answer loopback clients only unless allow_remote_admin is set. Real emulators on real sockets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from pipeline.emulator import EmulatorProfile, RunningEmulator, start_emulator
from pipeline.emulator.app import create_app
from pipeline.emulator.gateway import is_loopback

LIMIT = 64 * 1024


def _raw_request(emu: RunningEmulator, head: str, body: bytes, timeout_s: float = 5.0) -> tuple[int, bytes, float]:
    """Send a request head and only part of its body over a raw socket; the status, the answer and how long
    the answer took. The client never sends the rest, so an answer proves the server did not wait for it."""
    host, port = emu.root_url.removeprefix("http://").rsplit(":", 1)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(head.encode("ascii") + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
        while True:  # the rest of the answer, until the server closes
            try:
                piece = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not piece:
                break
            answer += piece
    return int(answer.split(b" ", 2)[1]), answer, time.monotonic() - started


@pytest.fixture(scope="module")
def capped() -> Iterator[RunningEmulator]:
    with start_emulator(EmulatorProfile(max_body_bytes=LIMIT)) as running:
        yield running


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/api/v1/embeddings", "/api/v1/files", "/api/v2/oauth"])
def test_a_body_announced_too_large_is_refused_before_it_is_read(capped: RunningEmulator, path: str) -> None:
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
            f"Content-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n")
    status, answer, took = _raw_request(capped, head, b'{"model": "Embeddings", "input": ["')
    assert status == 413 and b"too large" in answer and took < 3  # 1 GB never sent: nothing waited for it
    assert capped.stats()["status_counts"].get("413", 0) >= 1


@pytest.mark.timeout(30)
def test_a_chunked_body_is_cut_off_at_the_limit(capped: RunningEmulator, http: httpx.Client,
                                                 get_token: Callable[[RunningEmulator], str]) -> None:
    token = get_token(capped)
    sent = 0

    def body() -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
        nonlocal sent
        yield b'{"model": "Embeddings", "input": ["'
        for _ in range(64):
            sent += 16 * 1024
            yield b"a" * 16 * 1024
        yield b'"]}'

    try:
        response = http.post(f"{capped.base_url}/embeddings", content=body(),
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    except httpx.TransportError:  # the server may close while the client still writes
        pytest.fail("no 413 answer")
    assert response.status_code == 413 and "too large" in response.json()["message"]
    small = http.post(f"{capped.base_url}/embeddings", headers={"Authorization": f"Bearer {token}"},
                      json={"model": "Embeddings", "input": ["a short text"]})
    assert small.status_code == 200  # under the limit, bodies are read as before


@pytest.mark.timeout(30)
def test_an_upload_over_the_limit_gets_413(capped: RunningEmulator, http: httpx.Client,
                                           get_token: Callable[[RunningEmulator], str]) -> None:
    token = get_token(capped)
    response = http.post(f"{capped.base_url}/files", headers={"Authorization": f"Bearer {token}"},
                         files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 2 * LIMIT, "image/png")},
                         data={"purpose": "general"})
    assert response.status_code == 413


def test_the_default_limit_is_above_the_largest_upload() -> None:
    assert EmulatorProfile().max_body_bytes > 15 * 1024 * 1024
    assert EmulatorProfile(max_body_bytes=LIMIT, allow_remote_admin=True).cli_args() == [
        "--max-body-bytes", str(LIMIT), "--allow-remote-admin"]


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                                ("::ffff:127.0.0.1", True), ("10.0.0.5", False),
                                                ("192.0.2.7", False), ("::ffff:192.0.2.7", False),
                                                ("testclient", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback((host, 1234)) is loopback
    assert is_loopback(None) is False


async def _admin_calls(profile: EmulatorProfile, client_host: str) -> list[int]:
    transport = httpx.ASGITransport(app=create_app(profile), client=(client_host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
        return [(await client.get("/_stats")).status_code,
                (await client.post("/_stats/reset")).status_code,
                (await client.post("/_admin/expire_tokens")).status_code,
                (await client.get("/api/v1/models")).status_code]  # not an admin route: 401, as always


def test_admin_routes_refuse_a_remote_client_unless_allowed() -> None:
    assert asyncio.run(_admin_calls(EmulatorProfile(), "192.0.2.7")) == [403, 403, 403, 401]
    assert asyncio.run(_admin_calls(EmulatorProfile(), "127.0.0.1")) == [200, 200, 200, 401]
    assert asyncio.run(_admin_calls(EmulatorProfile(allow_remote_admin=True), "192.0.2.7")) == [200, 200, 200, 401]


def _outward_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.mark.timeout(30)
def test_admin_routes_over_a_real_non_loopback_connection() -> None:
    address = _outward_address()
    if address is None:
        pytest.skip("no non-loopback interface")
    for allow, expected in ((False, 403), (True, 200)):
        with start_emulator(EmulatorProfile(allow_remote_admin=allow), host="0.0.0.0") as emu:
            port = emu.root_url.rsplit(":", 1)[1]
            with httpx.Client(timeout=5) as client:
                assert client.get(f"http://{address}:{port}/_stats").status_code == expected
                assert client.get(f"http://127.0.0.1:{port}/_stats").status_code == 200
            assert emu.stats()["requests"] == 0  # the in-process control is not an HTTP client
