"""Emulator server: run the emulator app on a real socket, in a background thread or a subprocess, HTTP or HTTPS.

Owns uvicorn, sockets, threads and processes; the routes live in app.py and the knobs in profile.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import uvicorn

from .app import create_app
from .gateway import EmulatorState
from .profile import EmulatorProfile

T = TypeVar("T")
TlsFiles = tuple[str, str]  # (certificate chain PEM, private key PEM)
STARTUP_TIMEOUT_S = 30.0
_URL_KEYS = ("GIGACHAT_BASE_URL", "GIGACHAT_AUTH_URL", "GIGACHAT_CREDENTIALS")


class _Control(Protocol):
    def stats(self) -> dict[str, Any]: ...
    def reset_stats(self) -> None: ...
    def expire_tokens(self) -> None: ...


class RunningEmulator:
    """A listening emulator: its URLs, the credentials it accepts, and its counters."""

    def __init__(self, root_url: str, profile: EmulatorProfile, control: _Control) -> None:
        self.root_url = root_url
        self.profile = profile
        self._control = control

    @property
    def base_url(self) -> str:
        """The REST base, like GIGACHAT_BASE_URL: `<root>/api/v1`."""
        return f"{self.root_url}/api/v1"

    @property
    def auth_url(self) -> str:
        """The OAuth endpoint, like GIGACHAT_AUTH_URL: `<root>/api/v2/oauth`."""
        return f"{self.root_url}/api/v2/oauth"

    @property
    def credentials(self) -> str:
        """The base64 authorization key the OAuth endpoint accepts."""
        return self.profile.credentials

    def stats(self) -> dict[str, Any]:
        """The counters, as GET /_stats returns them."""
        return self._control.stats()

    def reset_stats(self) -> None:
        """Zero the counters, as POST /_stats/reset does."""
        self._control.reset_stats()

    def expire_tokens(self) -> None:
        """Expire every issued token, as POST /_admin/expire_tokens does."""
        self._control.expire_tokens()


class _OnLoop:
    """Control of an in-process emulator, run on its own event loop so no counter is read mid-update."""

    def __init__(self, loop: asyncio.AbstractEventLoop, state: EmulatorState) -> None:
        self.loop = loop
        self.state = state

    def _run(self, action: Callable[[], T]) -> T:
        async def call() -> T:
            return action()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=10)

    def stats(self) -> dict[str, Any]:
        return self._run(self.state.stats.snapshot)

    def reset_stats(self) -> None:
        self._run(self.state.stats.reset)

    def expire_tokens(self) -> None:
        self._run(self.state.expire_tokens)


class _OverHttp:
    """Control of an emulator in another process, through its /_stats and /_admin routes."""

    def __init__(self, root_url: str, tls: TlsFiles | None) -> None:
        self.client = httpx.Client(
            base_url=root_url, verify=_pinned_context(tls[0]) if tls else True, timeout=10
        )

    def close(self) -> None:
        self.client.close()

    def stats(self) -> dict[str, Any]:
        response = self.client.get("/_stats")
        response.raise_for_status()
        return dict(response.json())

    def reset_stats(self) -> None:
        self.client.post("/_stats/reset").raise_for_status()

    def expire_tokens(self) -> None:
        self.client.post("/_admin/expire_tokens").raise_for_status()


def _pinned_context(certfile: str) -> ssl.SSLContext:
    """Trust exactly the emulator's own certificate (its CA file is not ours to know)."""
    context = ssl.create_default_context(cafile=certfile)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class _SkipDeliberateCuts(logging.Filter):
    """Hide uvicorn's error line for the connections the profile cuts on purpose (drop_rate, stream_break_after)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def _root_url(host: str, port: int, tls: TlsFiles | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


@contextmanager
def start_emulator(
    profile: EmulatorProfile = EmulatorProfile(),  # noqa: B008 - frozen, so one shared default is safe
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TlsFiles | None = None,
) -> Iterator[RunningEmulator]:
    """Serve an emulator from a background thread with its own event loop; stops when the block exits.

    Returns once the socket is listening. `port=0` picks a free port; `tls=(certfile, keyfile)` serves HTTPS.

    Raises:
        RuntimeError: the server did not start (e.g. the certificate could not be loaded).
    """
    app = create_app(profile)
    state: EmulatorState = app.state.emulator
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets that do, and without it
    # Nagle's algorithm and delayed ACKs add 40 ms to every keep-alive request.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    error_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _SkipDeliberateCuts) for f in error_log.filters):
        error_log.addFilter(_SkipDeliberateCuts())
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        log_config=None,  # leave the host process's logging setup alone
        lifespan="off",
        timeout_graceful_shutdown=1,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = uvicorn.Server(config)
    loops: list[asyncio.AbstractEventLoop] = []
    failures: list[BaseException] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve(sockets=[sock])

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread below
            failures.append(exc)

    thread = threading.Thread(target=run, name="gigachat-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        if not server.started:
            raise RuntimeError(
                f"the GigaChat emulator did not start: {failures[0] if failures else 'timeout'}"
            )
        root = _root_url(host, sock.getsockname()[1], tls)
        yield RunningEmulator(root, profile, _OnLoop(loops[0], state))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def start_emulator_process(
    profile: EmulatorProfile = EmulatorProfile(),  # noqa: B008 - frozen, so one shared default is safe
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TlsFiles | None = None,
) -> Iterator[RunningEmulator]:
    """Serve an emulator from a child `python -m pipeline.emulator`, so it shares no GIL with the caller.

    Raises:
        RuntimeError: the child exited or printed no URLs within STARTUP_TIMEOUT_S.
    """
    command = [
        sys.executable,
        "-m",
        "pipeline.emulator",
        "--host",
        host,
        "--port",
        str(port),
        *profile.cli_args(),
    ]
    if tls:
        command += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    project_root = str(Path(__file__).resolve().parents[2])  # so the child imports this very package
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [project_root, os.environ.get("PYTHONPATH")])),
    }
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(child, lines), name="gigachat-emulator-stdout", daemon=True).start()
    control: _OverHttp | None = None
    try:
        printed = _read_urls(lines, time.monotonic() + STARTUP_TIMEOUT_S)
        root = printed["GIGACHAT_BASE_URL"].removesuffix("/api/v1")
        control = _OverHttp(root, tls)
        yield RunningEmulator(root, profile, control)
    finally:
        if control is not None:
            control.close()
        child.terminate()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _pump(child: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    """Forward the child's stdout lines until it closes, so a full pipe never blocks the child."""
    assert child.stdout is not None
    for line in child.stdout:
        lines.put(line.strip())
    lines.put(None)


def _read_urls(lines: queue.Queue[str | None], deadline: float) -> dict[str, str]:
    printed: dict[str, str] = {}
    while not all(key in printed for key in _URL_KEYS):
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError("the GigaChat emulator process printed no URLs in time") from None
        if line is None:
            raise RuntimeError("the GigaChat emulator process exited before it was ready")
        key, sep, value = line.partition("=")
        if sep and key in _URL_KEYS:
            printed[key] = value
    return printed
