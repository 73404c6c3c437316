"""Fixtures for the emulator tests: running emulators, tokens, authorised clients, a test CA and images.

Everything goes over real sockets on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import ssl
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest
import trustme

from pipeline.emulator import EmulatorProfile, RunningEmulator, start_emulator

StartEmulator = Callable[..., RunningEmulator]


@pytest.fixture(scope="module")
def emu() -> Iterator[RunningEmulator]:
    """One default emulator shared by a test module."""
    with start_emulator() as running:
        yield running


@pytest.fixture
def make_emulator() -> Iterator[StartEmulator]:
    """Start emulators with custom profiles (EmulatorProfile keyword arguments); all stop after the test."""
    with ExitStack() as stack:

        def start(**knobs: object) -> RunningEmulator:
            return stack.enter_context(start_emulator(EmulatorProfile(**knobs)))  # type: ignore[arg-type]

        yield start


@pytest.fixture(scope="session")
def default_tls() -> ssl.SSLContext:
    """One default TLS context for every plain client (httpx would load certifi anew, ~40 ms, for each)."""
    return ssl.create_default_context()


@pytest.fixture(scope="session")
def http(default_tls: ssl.SSLContext) -> Iterator[httpx.Client]:
    """A client without a base URL, for OAuth and the admin routes."""
    with httpx.Client(verify=default_tls, timeout=10) as client:
        yield client


@pytest.fixture
def get_token(http: httpx.Client) -> Callable[[RunningEmulator], str]:
    """Fetch an access token over OAuth exactly as the doc describes it (§2.1)."""

    def fetch(running: RunningEmulator, scope: str = "GIGACHAT_API_PERS") -> str:
        response = http.post(
            running.auth_url,
            headers={"Authorization": f"Basic {running.credentials}", "RqUID": str(uuid.uuid4())},
            data={"scope": scope},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    return fetch


@pytest.fixture
def make_client(
    get_token: Callable[[RunningEmulator], str],
) -> Iterator[Callable[[RunningEmulator], httpx.Client]]:
    """httpx clients on an emulator's REST base with a fresh bearer token; all closed after the test."""
    with ExitStack() as stack:

        def make(running: RunningEmulator) -> httpx.Client:
            headers = {"Authorization": f"Bearer {get_token(running)}"}
            client = httpx.Client(base_url=running.base_url, headers=headers, timeout=10, verify=default_tls)
            return stack.enter_context(client)

        yield make


@pytest.fixture
def client(emu: RunningEmulator, make_client: Callable[[RunningEmulator], httpx.Client]) -> httpx.Client:
    """An authorised client on the shared emulator."""
    return make_client(emu)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(server certificate chain, server key, CA bundle) from a throwaway CA, for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, bundle = folder / "server.pem", folder / "server.key", folder / "ca.pem"
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    return str(cert), str(key), str(bundle)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@pytest.fixture(scope="session")
def png_bytes() -> Callable[[int, int], bytes]:
    """A valid grey PNG of the given width and height."""

    def make(width: int, height: int) -> bytes:
        header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        pixels = zlib.compress(b"".join(b"\x00" + b"\x80" * width for _ in range(height)))
        return (
            b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", pixels)
            + _png_chunk(b"IEND", b"")
        )

    return make


@pytest.fixture(scope="session")
def jpeg_bytes() -> Callable[[int, int], bytes]:
    """A JPEG header (SOI, APP0, SOF0, EOI) of the given size: all the emulator reads of a JPEG."""

    def make(width: int, height: int) -> bytes:
        app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
        return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"

    return make
