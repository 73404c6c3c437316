"""GigaChat auth: get, cache and refresh the access token (OAuth key, user/password, or a given token).

No sockets of its own: the clients pass a fetch function. One refresh runs at a time (thread and asyncio locks).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ...config import GigaChatSettings, Secret
from ...errors import AuthError
from .. import http
from . import _wire

__all__ = ["DEFAULT_EXPIRY_BUFFER_MS", "Token", "TokenManager", "TokenRequest"]

DEFAULT_EXPIRY_BUFFER_MS = 60_000  # GIGACHAT_TOKEN_EXPIRY_BUFFER_MS default in Sber's SDK
EXPIRY_SAFETY_MS = 5_000  # a stale token is still sent (while its refresh runs) until this close to expiry

log = logging.getLogger("pipeline.providers.gigachat")


@dataclass(frozen=True, eq=False)
class Token:
    """An access token; refresh_at_ms 0 means it is used until the service refuses it."""

    value: Secret
    expires_at_ms: int
    refresh_at_ms: int


@dataclass(frozen=True, eq=False)
class TokenRequest:
    """A POST to a token endpoint; its repr leaves the headers out (they hold the credentials)."""

    url: str
    endpoint: str
    headers: Mapping[str, str]
    form: Mapping[str, str] | None

    def __repr__(self) -> str:
        return f"TokenRequest(POST {self.endpoint})"


class TokenManager:
    """Caches one token; usable until buffer_ms before expires_at (half its life if that is shorter)."""

    def __init__(self, settings: GigaChatSettings, *, buffer_ms: int = DEFAULT_EXPIRY_BUFFER_MS,
                 clock: Callable[[], float] = time.time, user_agent: str = "") -> None:
        self._settings = settings
        self._buffer_ms = buffer_ms
        self._clock = clock
        self._user_agent = user_agent
        self._token: Token | None = None
        if settings.access_token:
            self._token = Token(settings.access_token, 0, 0)
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        self._alock_loop: asyncio.AbstractEventLoop | None = None
        self._ahead: asyncio.Task[None] | None = None
        self._prefetch: threading.Event | None = None
        self._ahead_not_before = 0.0  # after a failed refresh ahead, the next waits a second
        self.refreshes = 0  # token requests sent, for diagnostics and tests

    @property
    def mode(self) -> str:
        """"oauth", "password" (POST /token), "token" (a pre-issued one only) or "none"."""
        s = self._settings
        if s.credentials:
            return "oauth"
        if s.user and s.password:
            return "password"
        return "token" if s.access_token else "none"

    def __repr__(self) -> str:
        return f"TokenManager(mode={self.mode!r}, has_token={self._token is not None})"

    def current(self) -> Token | None:
        """The cached token if it is still usable, else None."""
        token = self._token
        if token is None:
            return None
        if token.refresh_at_ms and self._clock() * 1000 >= token.refresh_at_ms:
            return None
        return token

    def invalidate(self, token: Token) -> None:
        """Drop `token` after the service refused it (unless another caller already replaced it)."""
        if self._token is token:
            self._token = None

    def scrub(self, data: bytes) -> bytes:
        """`data` with every credential and token value replaced by ***."""
        for secret in self._secret_values():
            data = data.replace(secret.encode(), b"***")
        return data

    def _secret_values(self) -> list[str]:
        s = self._settings
        values = [x.get() for x in (s.credentials, s.password, s.access_token, s.key_file_password) if x]
        if self._token is not None:
            values.append(self._token.value.get())
        if s.user and s.password:
            values.append(self._basic_user_password())
        return [v for v in values if len(v) >= 4]

    def _basic_user_password(self) -> str:
        assert self._settings.password is not None
        raw = f"{self._settings.user}:{self._settings.password.get()}".encode()
        return base64.b64encode(raw).decode("ascii")

    def token_request(self) -> TokenRequest:
        """The request that fetches a new token. Raises AuthError when nothing can fetch one."""
        s = self._settings
        headers = {"Accept": "application/json"}
        if self._user_agent:
            headers["User-Agent"] = self._user_agent
        if self.mode == "oauth":
            assert s.credentials is not None
            headers |= {"Authorization": f"Basic {s.credentials.get()}", "RqUID": str(uuid.uuid4()),
                        "Content-Type": "application/x-www-form-urlencoded"}
            return TokenRequest(s.auth_url, urlsplit(s.auth_url).path or s.auth_url, headers, {"scope": s.scope})
        if self.mode == "password":
            url = s.base_url.rstrip("/") + "/token"
            headers["Authorization"] = f"Basic {self._basic_user_password()}"
            return TokenRequest(url, urlsplit(url).path, headers, None)
        if self.mode == "token":
            raise AuthError("the access token was refused and no credentials are set to get a new one "
                            "(set GIGACHAT_CREDENTIALS, or GIGACHAT_USER and GIGACHAT_PASSWORD)",
                            provider=_wire.PROVIDER, status=401)
        raise AuthError("no GigaChat credentials: set GIGACHAT_CREDENTIALS (or GIGACHAT_ACCESS_TOKEN, "
                        "or GIGACHAT_USER and GIGACHAT_PASSWORD)", provider=_wire.PROVIDER)

    def accept(self, request: TokenRequest, response: _wire.RawResponse) -> Token:
        """Store the token from a token endpoint's answer. Raises AuthError on a refusal."""
        if not 200 <= response.status < 300:
            hint = "check GIGACHAT_CREDENTIALS and GIGACHAT_SCOPE" if self.mode == "oauth" else \
                "check GIGACHAT_USER and GIGACHAT_PASSWORD"
            raise http.error_for_status(response.status, self.scrub(response.body), request.endpoint,
                                        provider=_wire.PROVIDER, retry_after=response.retry_after, oauth=True,
                                        now=self._clock(), hint=hint if response.status in (400, 401, 403) else "")
        value, expires_at = _wire.parse_token(response.body, request.endpoint)
        now_ms = int(self._clock() * 1000)
        refresh_at = 0
        if expires_at:
            refresh_at = expires_at - min(self._buffer_ms, max(0, expires_at - now_ms) // 2)
        token = Token(Secret(value), expires_at, refresh_at)
        self._token = token
        return token

    def token(self, fetch: Callable[[TokenRequest], _wire.RawResponse]) -> Token:
        """A usable token, fetching one (under the thread lock, once for all waiters) when needed."""
        token = self.current()
        if token is not None:
            return token
        with self._lock:
            token = self.current()
            if token is not None:
                return token
            request = self.token_request()
            self.refreshes += 1
            return self.accept(request, fetch(request))

    async def atoken(self, fetch: Callable[[TokenRequest], Awaitable[_wire.RawResponse]]) -> Token:
        """As token(), for the event loop: concurrent callers wait for one refresh.

        Refreshes ahead: once a token is due for renewal but still some seconds from expiry, callers
        keep using it while one background task fetches the next, so a long run never stalls on it.
        """
        token = self.current()
        if token is not None:
            return token
        stale = self._token
        if stale is not None and self._clock() * 1000 < stale.expires_at_ms - EXPIRY_SAFETY_MS:
            if (self._ahead is None or self._ahead.done()) and self._clock() >= self._ahead_not_before:
                self._ahead = asyncio.create_task(self._refresh_ahead(fetch))
            return stale
        return await self._refresh(fetch)

    async def _refresh(self, fetch: Callable[[TokenRequest], Awaitable[_wire.RawResponse]]) -> Token:
        """A usable token, fetched under the asyncio lock (once for all waiters) unless one came meanwhile."""
        async with self._async_lock():
            token = self.current()
            if token is not None:
                return token
            prefetch = self._prefetch
            if prefetch is not None and not prefetch.is_set():  # wait for it rather than ask twice
                await asyncio.to_thread(prefetch.wait)
                if (token := self.current()) is not None:
                    return token
            request = self.token_request()
            self.refreshes += 1
            return self.accept(request, await fetch(request))

    def prefetch(self, fetch: Callable[[TokenRequest], _wire.RawResponse]) -> None:
        """Start fetching a token in a thread and return; atoken() waits for it instead of asking again.

        A failure is only logged: the first real request fetches in line and reports it.
        """
        if self.current() is not None or (self._prefetch is not None and not self._prefetch.is_set()):
            return
        done = self._prefetch = threading.Event()

        def run() -> None:
            try:
                self.token(fetch)
            except Exception as e:
                log.debug("token prefetch failed (the first request fetches again): %s", e)
            finally:
                done.set()

        threading.Thread(target=run, name="token-prefetch", daemon=True).start()

    async def _refresh_ahead(self, fetch: Callable[[TokenRequest], Awaitable[_wire.RawResponse]]) -> None:
        try:
            await self._refresh(fetch)
        except Exception as e:  # the old token still works: the next caller past its expiry retries in line
            self._ahead_not_before = self._clock() + 1.0
            log.warning("refreshing the access token ahead of expiry failed: %s", e)

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._alock is None or self._alock_loop is not loop:
            self._alock, self._alock_loop = asyncio.Lock(), loop
        return self._alock
