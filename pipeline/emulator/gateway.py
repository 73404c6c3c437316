"""Emulator gateway: per-emulator state and the middleware every request meets before its route.

Request ids, counters, issued tokens, 429s, latency and injected 500s; knows no endpoint (those are app.py's),
only which path is the OAuth host's (the real one lives on another host, outside the API's limits).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .chat import StoredFile
from .profile import EmulatorProfile

JSON_TYPE = "application/json; charset=utf-8"
OAUTH_PATH = "/api/v2/oauth"  # the real one is ngw.devices.sberbank.ru:9443, not the API host
DUE_KEY = "emulator.due"  # scope key: monotonic time at which the gateway's base latency (+ jitter) ran out
_EXPIRED_KEPT_S = 3600.0
ADMIN_PREFIXES = ("/_stats", "/_admin/")  # the emulator's own control routes, not GigaChat's


class ApiError(Exception):
    """An error answer: HTTP status, JSON body and extra headers."""

    def __init__(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(body.get("message"))
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def rest_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> ApiError:
    """An error in the REST host's shape: {"status", "message"}."""
    return ApiError(status, {"status": status, "message": message}, headers)


def json_response(body: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """orjson-encoded JSON, numpy arrays included, with the real service's content type."""
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status_code=status, headers=headers, media_type=JSON_TYPE)


@dataclass
class IssuedToken:
    """What the emulator keeps of an access token it issued."""

    expires_at: float  # Unix time, seconds
    scope: str


@dataclass
class Stats:
    """Counters behind GET /_stats; only paths under /api/ are counted.

    requests, status_counts and by_path include the OAuth endpoint; in_flight and peak_in_flight are the API
    host's calls only (those the concurrency cap counts), so an OAuth call is never in them.
    """

    requests: int = 0
    texts_embedded: int = 0
    embedding_tokens: int = 0
    chat_tokens: int = 0
    tokens_issued: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    first_call_at: float = 0.0  # Unix time the first API-host call arrived (0: none yet), for benchmarks
    last_call_done_at: float = 0.0  # Unix time the latest admitted API-host call was answered
    errors_injected: int = 0
    connections_dropped: int = 0
    wrong_counts: int = 0
    streams_broken: int = 0
    status_counts: Counter[str] = field(default_factory=Counter)
    by_path: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        plain = {k: v for k, v in vars(self).items() if not isinstance(v, Counter)}
        return {**plain, "status_counts": dict(self.status_counts), "by_path": dict(self.by_path)}

    def reset(self) -> None:
        """Zero every counter but the requests still in flight."""
        in_flight = self.in_flight
        self.__init__()  # type: ignore[misc]
        self.in_flight = self.peak_in_flight = in_flight


class _TokenBucket:
    """`rate` admissions per second with bursts of up to max(1, rate)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0.0 if admitted, else the seconds until a token is free."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class EmulatorState:
    """Everything one emulator remembers: issued tokens, uploaded files, counters and seeded dice."""

    def __init__(self, profile: EmulatorProfile) -> None:
        self.profile = profile
        self.stats = Stats()
        self.tokens: dict[str, IssuedToken] = {}
        self.files: dict[str, StoredFile] = {}
        self.bucket = _TokenBucket(profile.rps) if profile.rps > 0 else None
        # One generator per knob, so that turning one knob on does not shift the draws of another.
        self._dice = {
            name: random.Random(f"{profile.seed}:{name}") for name in ("error", "drop", "count", "jitter")
        }

    def roll(self, name: str, rate: float) -> bool:
        """A seeded draw that is true with probability `rate` (no draw at all when the rate is 0)."""
        return rate > 0 and self._dice[name].random() < rate

    def jitter_s(self) -> float:
        """This call's seeded share of latency_jitter_ms, in seconds."""
        jitter = self.profile.latency_jitter_ms
        return self._dice["jitter"].uniform(0.0, jitter) / 1000 if jitter > 0 else 0.0

    def issue_token(self, scope: str) -> tuple[str, int]:
        """A new access token and its expiry in Unix milliseconds."""
        now = time.time()
        # Forget tokens an hour after they expire; until then they still answer "Token has expired".
        for stale in [t for t, entry in self.tokens.items() if entry.expires_at <= now - _EXPIRED_KEPT_S]:
            del self.tokens[stale]
        token = "eyJ" + secrets.token_urlsafe(120)
        expires_at = now + self.profile.token_ttl_s
        self.tokens[token] = IssuedToken(expires_at, scope)
        self.stats.tokens_issued += 1
        return token, int(expires_at * 1000)

    def expire_tokens(self) -> int:
        """Make every issued token expired at once; returns how many there were."""
        now = time.time()
        for entry in self.tokens.values():
            entry.expires_at = min(entry.expires_at, now)
        return len(self.tokens)

    def authorize(self, request: Request) -> IssuedToken:
        """The bearer token's record.

        Raises:
            ApiError: 401 when the token is missing, unknown or expired.
        """
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise rest_error(401, "Unauthorized: a Bearer token is required")
        entry = self.tokens.get(token.strip())
        if entry is None:
            raise rest_error(401, "Unauthorized: unknown token")
        if entry.expires_at <= time.time():
            raise rest_error(401, "Token has expired")
        return entry


class Gateway:
    """ASGI middleware: request ids, counters, concurrency and rate limits, latency and injected 500s.

    Every path under /api/ is counted and waits base_latency_ms + jitter. The OAuth endpoint stands for the
    real OAuth host, another service than the API: it takes no concurrency slot and no rate-limit token, is
    never refused with 429 and never answered with an injected 500, and is not counted in in_flight. It keeps
    the base latency (+ jitter), as a round trip to any server. POST /api/v1/token is on the API host: limited
    like every API call, only exempt from injected 500s.
    """

    def __init__(self, app: ASGIApp, state: EmulatorState, routes: list[Route]) -> None:
        self.app = app
        self.state = state
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        ids = [
            (name, headers.get(name) or str(uuid.uuid4()).encode())
            for name in (b"x-request-id", b"x-session-id")
        ]
        path: str = scope["path"]
        counted = path.startswith("/api/")
        stats = self.state.stats

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *ids]}
                if counted:
                    stats.status_counts[str(message["status"])] += 1
            await send(message)

        if not counted:
            await self.app(scope, receive, send_with_ids)
            return
        arrived = time.monotonic()
        stats.requests += 1
        stats.by_path[self._route_path(scope)] += 1
        api_host = path != OAUTH_PATH
        if api_host:
            stats.first_call_at = stats.first_call_at or time.time()
            refusal = self._admission()
            if refusal is not None:
                await json_response(refusal.body, refusal.status, refusal.headers)(
                    scope, receive, send_with_ids
                )
                return
            stats.in_flight += 1
            stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)

        try:
            delay_s = self.state.profile.base_latency_ms / 1000 + self.state.jitter_s()
            # Handlers with latency of their own (embeddings) add it to this due time rather than to their
            # own start, so that their compute, and any lateness of this sleep, falls inside the latency.
            scope[DUE_KEY] = arrived + delay_s
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if (
                api_host
                and path.startswith("/api/v1/")
                and path != "/api/v1/token"
                and self.state.roll("error", self.state.profile.error_rate)
            ):
                stats.errors_injected += 1
                error = rest_error(500, "Internal Server Error")
                await json_response(error.body, 500)(scope, receive, send_with_ids)
                return
            await self.app(scope, receive, send_with_ids)
        except ClientDisconnect:
            pass  # the client left while sending its body: nobody is left to answer
        finally:
            if api_host:
                stats.in_flight -= 1
                stats.last_call_done_at = time.time()

    def _admission(self) -> ApiError | None:
        """A 429 when the concurrency cap or the rate limit refuses the call, else None."""
        profile = self.state.profile
        if profile.max_concurrency and self.state.stats.in_flight >= profile.max_concurrency:
            return rest_error(429, "Too Many Requests: concurrency limit reached")
        if self.state.bucket is not None:
            wait_s = self.state.bucket.take()
            if wait_s > 0:
                header = profile.retry_after or f"{wait_s:.3f}"
                return rest_error(429, "Too Many Requests: rate limit reached", {"Retry-After": header})
        return None

    def _route_path(self, scope: Scope) -> str:
        """The route template ("/api/v1/files/{file_id}"), so counters do not grow with every file id."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return route.path
        return str(scope["path"])


def is_loopback(client: tuple[str, int] | None) -> bool:
    """True for a client on 127.0.0.0/8 or ::1 (an IPv4-mapped one too); False for anything else or unknown."""
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0].split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


class Guard:
    """ASGI middleware: refuses admin routes to non-loopback clients, and request bodies over max_body_bytes.

    A body announced larger by Content-Length gets 413 without a byte of it read (the server answers and
    closes the connection); a chunked body is counted as it is received and refused as soon as it passes
    the limit, so no more than max_body_bytes of it is ever held. Inside the Gateway, so refusals are
    counted in the stats like any other answer.
    """

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        profile = self.state.profile
        path: str = scope["path"]
        if (
            path.startswith(ADMIN_PREFIXES)
            and not profile.allow_remote_admin
            and not is_loopback(scope.get("client"))
        ):
            error = rest_error(403, "Forbidden: the emulator's admin routes answer loopback clients only"
                                    " (start it with --allow-remote-admin to allow others)")
            await json_response(error.body, error.status)(scope, receive, send)
            return
        limit = profile.max_body_bytes
        if not limit:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(scope, receive, send, limit)
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise rest_error(413, f"Request body is too large: over {limit} bytes")
            return message

        await self.app(scope, capped_receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        error = rest_error(413, f"Request body is too large: over {limit} bytes")
        # Connection: close, as the unread body cannot be skipped on a kept-alive connection.
        await json_response(error.body, error.status, {"Connection": "close"})(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
