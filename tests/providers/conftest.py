"""Fixtures for the provider tests: a throwaway CA (trustme) and GigaChat emulators serving real HTTP.

The emulator runs in-process on a free port; tests talk to it through the real clients, never a mock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from pipeline.config import GigaChatSettings, Secret


def make_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of the given size (red pixels)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def png() -> bytes:
    """A 3x2 PNG."""
    return make_png(3, 2)


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def emulator() -> Iterator[Any]:
    """One plain-HTTP emulator for the whole session; tests that count requests call reset_stats()."""
    from pipeline.emulator import EmulatorProfile, start_emulator

    with start_emulator(EmulatorProfile()) as emu:
        yield emu


def settings_for(emu: Any, **kw: Any) -> GigaChatSettings:
    """Settings that point at `emu`, authenticating with its OAuth credentials unless told otherwise."""
    base: dict[str, Any] = {"base_url": emu.base_url, "auth_url": emu.auth_url,
                            "credentials": Secret(emu.credentials), "timeout_s": 10.0}
    return GigaChatSettings(**(base | kw))


@pytest.fixture
def settings(emulator: Any) -> GigaChatSettings:
    return settings_for(emulator)


@pytest.fixture(name="settings_for")
def settings_for_fixture() -> Any:
    """settings_for(emu, **overrides), as a fixture (test modules here are not a package)."""
    return settings_for


class StubServer:
    """A raw HTTP server for what the emulator will not do: canned, broken or truncated answers.

    `routes[(method, path)] = (status, headers, body, cut)`: `cut` bytes of the body are sent, then the
    connection closes (None sends it whole). POST /oauth always issues a fresh token.
    """

    def __init__(self) -> None:
        import http.server
        import threading

        self.routes: dict[tuple[str, str], tuple[int, dict[str, str], bytes, int | None]] = {}
        self.hits: dict[str, int] = {}
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                stub.hits[self.path] = stub.hits.get(self.path, 0) + 1
                if self.path == "/oauth":
                    n = stub.hits[self.path]
                    route: tuple[int, dict[str, str], bytes, int | None] = (200, {"Content-Type": "application/json"},
                             b'{"access_token": "stub-token-%d", "expires_at": 4102444800000}' % n, None)
                else:
                    route = stub.routes.get((self.command, self.path),
                                            (404, {}, b'{"status": 404, "message": "no route"}', None))
                status, headers, body, cut = route
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                if cut is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body if cut is None else body[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

            do_GET = do_POST = _serve

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def settings(self, **kw: Any) -> GigaChatSettings:
        base: dict[str, Any] = {"base_url": self.url + "/api/v1", "auth_url": self.url + "/oauth",
                                "credentials": Secret("c3R1Yi1jcmVkZW50aWFscw=="), "timeout_s": 5.0}
        return GigaChatSettings(**(base | kw))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="session")
def stub_server() -> Iterator[StubServer]:
    server = StubServer()
    yield server
    server.close()


@pytest.fixture
def stub(stub_server: StubServer) -> StubServer:
    """The session's stub server, with no routes and no hits."""
    stub_server.routes.clear()
    stub_server.hits.clear()
    return stub_server
