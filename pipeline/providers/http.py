"""Provider HTTP boundary: statuses, Retry-After, server messages and httpx failures become our errors.

Shared by every HTTP provider (GigaChat, OpenAI-compatible); also builds their TLS contexts and httpx clients.
"""

from __future__ import annotations

import http
import ssl
from email.utils import parsedate_to_datetime
from typing import Any

import certifi
import httpx
import orjson

from ..errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    ConfigError,
    NetworkError,
    ProviderError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
)

__all__ = [
    "async_client",
    "error_for_status",
    "map_httpx_error",
    "parse_retry_after",
    "server_message",
    "sse_data",
    "stream_error",
    "sync_client",
    "tls_context",
]

_MESSAGE_KEYS = ("message", "error_description", "detail", "error")


def server_message(status: int, body: bytes) -> str:
    """The server's message (`error.message`, `message`, ...), else the start of the body, else the status phrase."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str) and inner["message"].strip():
            return str(inner["message"]).strip()  # OpenAI's {"error": {"message": ...}}
        for key in _MESSAGE_KEYS:
            if isinstance(data.get(key), str) and data[key].strip():
                return str(data[key]).strip()
    text = body.decode("utf-8", "replace").strip()
    if text:
        return " ".join(text.split())[:300]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "no message"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as seconds (a number, or an HTTP date given `now`); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return None if now is None else max(0.0, when - now)


def error_for_status(status: int, body: bytes, endpoint: str, *, provider: str, retry_after: str | None = None,
                     oauth: bool = False, now: float | None = None, hint: str = "") -> ProviderError:
    """The exception for a non-2xx answer: 401/403 auth, 429, 413, 400/404/422, 5xx; names status and message."""
    message = server_message(status, body) + (f" ({hint})" if hint else "")
    kw: dict[str, Any] = {"provider": provider, "endpoint": endpoint, "status": status}
    if status in (401, 403) or (oauth and status == 400):
        return AuthError(message, **kw)
    if status == 429:
        wait = parse_retry_after(retry_after, now=now)
        message += f" (retry after {wait:g} s)" if wait is not None else ""
        return RateLimitError(message, retry_after=wait, **kw)
    if status == 413:
        return RequestTooLargeError(message, **kw)
    if status in (400, 404, 422):
        return BadRequestError(message, **kw)
    if status >= 500:
        return ServerError(message, **kw)
    return ProviderError(message, retryable=False, **kw)


def map_httpx_error(exc: httpx.HTTPError, endpoint: str, timeout_s: float, *, provider: str,
                    ca_hint: str) -> ProviderError:
    """The one translation of httpx failures: timeouts and transport errors are retryable NetworkErrors."""
    kw: dict[str, Any] = {"provider": provider, "endpoint": endpoint}
    if isinstance(exc, httpx.TimeoutException):
        return NetworkError(f"no answer within {timeout_s:g} s ({type(exc).__name__})", **kw)
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc.__context__, ssl.SSLCertVerificationError):
        return NetworkError(f"TLS certificate verification failed ({text}); {ca_hint}", retryable=False, **kw)
    if isinstance(exc, httpx.DecodingError):
        return BadResponseError(f"undecodable body: {text}", **kw)
    if isinstance(exc, httpx.TransportError):
        return NetworkError(f"{type(exc).__name__}: {text}", **kw)
    return ProviderError(f"{type(exc).__name__}: {text}", retryable=False, **kw)


def stream_error(exc: httpx.HTTPError, endpoint: str, timeout_s: float, *, provider: str,
                 ca_hint: str) -> ProviderError:
    """A failure while reading SSE: a cut connection reads as a stream that ended before completion."""
    err = map_httpx_error(exc, endpoint, timeout_s, provider=provider, ca_hint=ca_hint)
    if isinstance(err, NetworkError) and not isinstance(exc, httpx.TimeoutException):
        return NetworkError(f"stream ended before completion ({err.server_message})", provider=provider,
                            endpoint=endpoint)
    return err


def tls_context(ca_bundle_file: str, *, label: str) -> ssl.SSLContext:
    """Verification on: ca_bundle_file alone is trusted when set, else certifi's store.

    Raises ConfigError (naming `label`, the setting) when the bundle cannot be loaded.
    """
    try:
        return ssl.create_default_context(cafile=ca_bundle_file or certifi.where())
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"{label} {ca_bundle_file}: cannot load it: {e}") from None


def _limits(max_connections: int) -> httpx.Limits | None:
    if not max_connections:
        return None
    return httpx.Limits(max_connections=max_connections, max_keepalive_connections=min(max_connections, 20))


def sync_client(verify: ssl.SSLContext, timeout_s: float, *, max_connections: int = 0) -> httpx.Client:
    """A blocking httpx client; max_connections 0 keeps httpx's default pool. Close it with .close()."""
    limits = _limits(max_connections)
    kw: dict[str, Any] = {"limits": limits} if limits else {}
    return httpx.Client(verify=verify, timeout=httpx.Timeout(timeout_s), **kw)


def async_client(verify: ssl.SSLContext, timeout_s: float, *, max_connections: int = 0) -> httpx.AsyncClient:
    """An async httpx client, bound to the running event loop's connections. Close it with await .aclose()."""
    limits = _limits(max_connections)
    kw: dict[str, Any] = {"limits": limits} if limits else {}
    return httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(timeout_s), **kw)


def sse_data(line: str) -> str | None:
    """The payload of a server-sent event's `data:` line ("[DONE]" included); None for any other line."""
    line = line.strip()
    return line[5:].strip() if line.startswith("data:") else None
