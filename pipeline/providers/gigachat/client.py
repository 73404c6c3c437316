"""GigaChat clients: thin, parallel sync (GigaChatClient) and async (AsyncGigaChatClient) shells over the wire.

The only network I/O of the package; httpx errors and statuses become ours in providers.http.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from ...config import GigaChatSettings
from ...errors import BadResponseError, ConfigError, ProviderError
from .. import http
from ..chat import ChatDelta, ChatReply
from ..embeddings_json import LARGE_BODY_BYTES
from . import _chat_wire, _wire
from ._chat_wire import ChatPlan, ChatRequest, Image
from ._wire import ApiRequest, EmbeddingsResult, ModelInfo
from .auth import DEFAULT_EXPIRY_BUFFER_MS, Token, TokenManager, TokenRequest

__all__ = ["AsyncGigaChatClient", "GigaChatClient", "ssl_context"]

log = logging.getLogger("pipeline.gigachat")
_WARNED_INSECURE: set[str] = set()


def _user_agent() -> str:
    try:
        return f"pipeline-gigachat/{version('pipeline')}"
    except PackageNotFoundError:
        return "pipeline-gigachat/0"


USER_AGENT = _user_agent()


def ssl_context(settings: GigaChatSettings) -> ssl.SSLContext:
    """Verification on by default (certifi); ca_bundle_file alone is trusted when set; off only when asked.

    Raises ConfigError when the CA bundle or client certificate cannot be loaded.
    """
    if settings.ca_bundle_file or settings.verify_ssl_certs:
        ctx = http.tls_context(settings.ca_bundle_file, label="GIGACHAT_CA_BUNDLE_FILE")
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        key = f"{settings.base_url} {settings.auth_url}"
        if key not in _WARNED_INSECURE:
            _WARNED_INSECURE.add(key)
            log.warning("TLS certificate verification is OFF for GigaChat (%s): the credentials and token can be "
                        "intercepted; set GIGACHAT_CA_BUNDLE_FILE to the Russian Trusted Root CA instead",
                        urlsplit(settings.base_url).netloc)
    if settings.cert_file:
        password = settings.key_file_password.get() if settings.key_file_password else None
        try:
            ctx.load_cert_chain(settings.cert_file, settings.key_file or None, password=password)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"GIGACHAT_CERT_FILE {settings.cert_file}: cannot load it: {e}") from None
    return ctx


def _httpx_error(exc: httpx.HTTPError, endpoint: str, timeout_s: float) -> ProviderError:
    return http.map_httpx_error(exc, endpoint, timeout_s, provider=_wire.PROVIDER, ca_hint=_wire.CA_HINT)


class _ClientCore:
    """What both clients share and what does no I/O: settings, token manager, TLS, request building."""

    def __init__(self, settings: GigaChatSettings, *, token_manager: TokenManager | None = None,
                 expiry_buffer_ms: int = DEFAULT_EXPIRY_BUFFER_MS, session_id: str = "") -> None:
        self.settings = settings
        self.auth = token_manager or TokenManager(settings, buffer_ms=expiry_buffer_ms, user_agent=USER_AGENT)
        self._base = settings.base_url.rstrip("/")
        self._session_id = session_id
        self._chat_model = settings.chat_model or _wire.DEFAULT_CHAT_MODEL
        self._ssl = ssl_context(settings)
        self._timeout = httpx.Timeout(settings.timeout_s)
        self._max_connections = settings.max_connections or 100

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(base_url={self._base!r}, auth={self.auth.mode!r}, "
                f"scope={self.settings.scope!r}, verify={self._ssl.verify_mode != ssl.CERT_NONE})")

    def _httpx_args(self, req: ApiRequest, token: Token) -> dict[str, Any]:
        headers = _wire.api_headers(token.value.get(), json_body=req.body is not None, stream=req.stream,
                                    session_id=self._session_id, user_agent=USER_AGENT)
        headers.update(req.headers)
        kw: dict[str, Any] = {"method": req.method, "url": self._base + req.path, "headers": headers}
        if req.body is not None:
            kw["content"] = req.body
        if req.file is not None:
            kw["files"] = {"file": req.file}
            kw["data"] = dict(req.form or {})
        return kw

    def _raw(self, method: str, endpoint: str, resp: httpx.Response, t0: float) -> _wire.RawResponse:
        log.debug("%s %s -> %d in %.1f ms", method, endpoint, resp.status_code, (time.perf_counter() - t0) * 1e3)
        return _wire.RawResponse(resp.status_code, resp.content, resp.headers.get("content-type", ""),
                                 resp.headers.get("retry-after"))

    def _check(self, req: ApiRequest, raw: _wire.RawResponse) -> _wire.RawResponse:
        if 200 <= raw.status < 300:
            return raw
        raise http.error_for_status(raw.status, self.auth.scrub(raw.body), req.path, provider=_wire.PROVIDER,
                                    retry_after=raw.retry_after, now=time.time())

    def _check_stream_type(self, req: ApiRequest, content_type: str) -> None:
        if not content_type.startswith("text/event-stream"):
            raise _wire.bad_response(req.path, f"expected text/event-stream, got {content_type or 'no content type'!r}")

    def _as_request(self, request: ChatRequest | Sequence[_chat_wire.MessageLike], opts: Mapping[str, Any]) -> ChatRequest:
        req = replace(request, **opts) if isinstance(request, ChatRequest) else ChatRequest(list(request), **opts)
        if self._session_id and not req.session_id:
            req = replace(req, session_id=self._session_id)
        return req

    def _plan(self, request: ChatRequest | Sequence[_chat_wire.MessageLike], opts: Mapping[str, Any]) -> ChatPlan:
        return _chat_wire.plan_chat(self._as_request(request, opts), default_model=self._chat_model)

    def _structured(self, messages: ChatRequest | Sequence[_chat_wire.MessageLike], schema: Mapping[str, Any],
                    name: str, model: str, opts: Mapping[str, Any]) -> ChatPlan:
        req = self._as_request(messages, {**opts, "model": model} if model else opts)
        fn = _chat_wire.structured_function(schema, name)
        req = replace(req, functions=[*(req.functions or ()), fn], function_call={"name": name})
        return _chat_wire.plan_chat(req, default_model=self._chat_model)

    @staticmethod
    def _read_local(image: Image, label: str) -> bytes:
        if image.data is not None:
            return image.data
        assert image.path is not None
        try:
            _chat_wire.check_image_size(os.stat(image.path).st_size, label)
            return Path(image.path).read_bytes()
        except OSError as e:
            raise _wire.bad_request(f"{label}: cannot read image {image.path}: {e.strerror}") from None

    @staticmethod
    def _file_args(file: bytes | str | os.PathLike[str], filename: str, mime: str) -> tuple[bytes, str, str]:
        if isinstance(file, (bytes, bytearray)):
            data, name = bytes(file), filename
        else:
            try:
                data, name = Path(file).read_bytes(), filename or Path(file).name
            except OSError as e:
                raise _wire.bad_request(f"cannot read {os.fspath(file)}: {e.strerror}", "/files") from None
        if not mime:
            mime = _chat_wire.sniff_image_mime(data) or mimetypes.guess_type(name or "")[0] or ""
        return data, name or "file", mime or "application/octet-stream"


def _empty(model: str) -> EmbeddingsResult:
    return EmbeddingsResult(np.zeros((0, 0), dtype=np.float32), [], model)


class GigaChatClient(_ClientCore):
    """Blocking client; one httpx.Client (TLS verified) for the token endpoint and the API."""

    def __init__(self, settings: GigaChatSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self._http = http.sync_client(self._ssl, self.settings.timeout_s, max_connections=self._max_connections)

    def __enter__(self) -> GigaChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- I/O core

    def _fetch_token(self, treq: TokenRequest) -> _wire.RawResponse:
        t0 = time.perf_counter()
        try:
            resp = self._http.post(treq.url, headers=dict(treq.headers), data=treq.form)
        except httpx.HTTPError as e:
            raise _httpx_error(e, treq.endpoint, self.settings.timeout_s) from None
        return self._raw("POST", treq.endpoint, resp, t0)

    def _send(self, req: ApiRequest) -> _wire.RawResponse:
        """Send with a valid token; on a 401 drop the token, refresh and retry once."""
        for attempt in (1, 2):
            token = self.auth.token(self._fetch_token)
            t0 = time.perf_counter()
            try:
                resp = self._http.request(**self._httpx_args(req, token))
            except httpx.HTTPError as e:
                raise _httpx_error(e, req.path, self.settings.timeout_s) from None
            raw = self._raw(req.method, req.path, resp, t0)
            if raw.status == 401 and attempt == 1:
                log.info("%s: token refused (401); refreshing once", req.path)
                self.auth.invalidate(token)
                continue
            return self._check(req, raw)
        raise AssertionError("unreachable")

    def _open_stream(self, req: ApiRequest) -> httpx.Response:
        for attempt in (1, 2):
            token = self.auth.token(self._fetch_token)
            t0 = time.perf_counter()
            try:
                resp = self._http.send(self._http.build_request(**self._httpx_args(req, token)), stream=True)
                if resp.status_code == 401 and attempt == 1:
                    resp.close()
                    self.auth.invalidate(token)
                    continue
                if not 200 <= resp.status_code < 300:
                    resp.read()
                    resp.close()
                    self._check(req, self._raw(req.method, req.path, resp, t0))
            except httpx.HTTPError as e:
                raise _httpx_error(e, req.path, self.settings.timeout_s) from None
            log.debug("%s %s -> %d (stream opened) in %.1f ms", req.method, req.path, resp.status_code,
                      (time.perf_counter() - t0) * 1e3)
            try:
                self._check_stream_type(req, resp.headers.get("content-type", ""))
            except BadResponseError:
                resp.close()
                raise
            return resp
        raise AssertionError("unreachable")

    def _upload_images(self, plan: ChatPlan) -> list[str]:
        files = []
        for i, image in plan.images:
            label = f"message {i}"
            data = self._fetch_url(image, label) if image.url else self._read_local(image, label)
            files.append((data, *_chat_wire.image_file(image, data, label)))
        return [self.upload_file(data, name, mime) for data, name, mime in files]

    def _fetch_url(self, image: Image, label: str) -> bytes:
        try:
            resp = httpx.get(image.url or "", timeout=self._timeout, follow_redirects=True)
        except httpx.HTTPError as e:
            raise _wire.bad_request(f"{label}: cannot fetch the image URL: {type(e).__name__}: {e}") from None
        if resp.status_code != 200:
            raise _wire.bad_request(f"{label}: fetching the image URL gave HTTP {resp.status_code}")
        return resp.content

    # -- API

    def get_models(self) -> list[ModelInfo]:
        return _wire.parse_models(self._send(_wire.models_request()).body)

    def get_model(self, name: str) -> ModelInfo:
        req = _wire.model_request(name)
        return _wire.parse_model(self._send(req).body, req.path)

    def embeddings(self, texts: Sequence[str], model: str = _wire.DEFAULT_EMBEDDINGS_MODEL) -> EmbeddingsResult:
        """One /embeddings call; raises BadResponseError on a wrong count, index, dimension or value."""
        req = _wire.embeddings_request(texts, model)
        n = len(texts)
        return _wire.parse_embeddings(self._send(req).body, n) if n else _empty(model)

    def tokens_count(self, texts: Sequence[str], model: str = "") -> list[int]:
        req = _wire.tokens_count_request(texts, model or self._chat_model)
        return _wire.parse_tokens_count(self._send(req).body, len(texts)) if len(texts) else []

    def get_balance(self) -> dict[str, float]:
        return _wire.parse_balance(self._send(_wire.balance_request()).body)

    def upload_file(self, file: bytes | str | os.PathLike[str], filename: str = "", mime: str = "",
                    purpose: str = "general") -> str:
        """Upload to /files; returns the file id to put in a message's attachments."""
        data, name, mime = self._file_args(file, filename, mime)
        return _wire.parse_file_id(self._send(_wire.upload_request(data, name, mime, purpose)).body)

    def chat(self, request: ChatRequest | Sequence[_chat_wire.MessageLike], **opts: Any) -> ChatReply:
        """One completion. Images are uploaded first; bad input raises BadRequestError before any call."""
        plan = self._plan(request, opts)
        return _chat_wire.parse_chat(self._send(plan.build(self._upload_images(plan))).body)

    def stream(self, request: ChatRequest | Sequence[_chat_wire.MessageLike], **opts: Any) -> Iterator[ChatDelta]:
        """SSE deltas; validation happens at the call, the request at the first next()."""
        return self._iter_stream(self._plan(request, opts))

    def _iter_stream(self, plan: ChatPlan) -> Iterator[ChatDelta]:
        req = plan.build(self._upload_images(plan), stream=True)
        resp = self._open_stream(req)
        decoder = _chat_wire.SSEDecoder(req.path)
        try:
            for line in resp.iter_lines():
                delta = decoder.feed(line)
                if delta is not None:
                    yield delta
                if decoder.done:
                    break
        except httpx.HTTPError as e:
            raise http.stream_error(e, req.path, self.settings.timeout_s, provider=_wire.PROVIDER,
                                    ca_hint=_wire.CA_HINT) from None
        finally:
            resp.close()
        decoder.close()

    def chat_structured(self, messages: ChatRequest | Sequence[_chat_wire.MessageLike], schema: Mapping[str, Any],
                        name: str = "structured_output", model: str = "", **opts: Any) -> dict[str, Any]:
        """A dict matching `schema`, through a forced function call (litellm's emulation)."""
        plan = self._structured(messages, schema, name, model, opts)
        response = _chat_wire.parse_chat(self._send(plan.build(self._upload_images(plan))).body)
        return _chat_wire.structured_result(response, schema, name)


class AsyncGigaChatClient(_ClientCore):
    """The same API as GigaChatClient, awaitable; `stream`/`astream` are async iterators."""

    def __init__(self, settings: GigaChatSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self._http = http.async_client(self._ssl, self.settings.timeout_s, max_connections=self._max_connections)

    async def __aenter__(self) -> AsyncGigaChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- I/O core

    async def _fetch_token(self, treq: TokenRequest) -> _wire.RawResponse:
        t0 = time.perf_counter()
        try:
            resp = await self._http.post(treq.url, headers=dict(treq.headers), data=treq.form)
        except httpx.HTTPError as e:
            raise _httpx_error(e, treq.endpoint, self.settings.timeout_s) from None
        return self._raw("POST", treq.endpoint, resp, t0)

    async def _send(self, req: ApiRequest) -> _wire.RawResponse:
        """Send with a valid token; on a 401 drop the token, refresh and retry once."""
        for attempt in (1, 2):
            token = await self.auth.atoken(self._fetch_token)
            t0 = time.perf_counter()
            try:
                resp = await self._http.request(**self._httpx_args(req, token))
            except httpx.HTTPError as e:
                raise _httpx_error(e, req.path, self.settings.timeout_s) from None
            raw = self._raw(req.method, req.path, resp, t0)
            if raw.status == 401 and attempt == 1:
                log.info("%s: token refused (401); refreshing once", req.path)
                self.auth.invalidate(token)
                continue
            return self._check(req, raw)
        raise AssertionError("unreachable")

    async def _open_stream(self, req: ApiRequest) -> httpx.Response:
        for attempt in (1, 2):
            token = await self.auth.atoken(self._fetch_token)
            t0 = time.perf_counter()
            try:
                resp = await self._http.send(self._http.build_request(**self._httpx_args(req, token)), stream=True)
                if resp.status_code == 401 and attempt == 1:
                    await resp.aclose()
                    self.auth.invalidate(token)
                    continue
                if not 200 <= resp.status_code < 300:
                    await resp.aread()
                    await resp.aclose()
                    self._check(req, self._raw(req.method, req.path, resp, t0))
            except httpx.HTTPError as e:
                raise _httpx_error(e, req.path, self.settings.timeout_s) from None
            log.debug("%s %s -> %d (stream opened) in %.1f ms", req.method, req.path, resp.status_code,
                      (time.perf_counter() - t0) * 1e3)
            try:
                self._check_stream_type(req, resp.headers.get("content-type", ""))
            except BadResponseError:
                await resp.aclose()
                raise
            return resp
        raise AssertionError("unreachable")

    async def _upload_images(self, plan: ChatPlan) -> list[str]:
        files = []
        for i, image in plan.images:
            label = f"message {i}"
            if image.url:
                data = await self._fetch_url(image, label)
            else:
                data = await asyncio.to_thread(self._read_local, image, label)
            files.append((data, *_chat_wire.image_file(image, data, label)))
        return [await self.upload_file(data, name, mime) for data, name, mime in files]

    async def _fetch_url(self, image: Image, label: str) -> bytes:
        try:
            async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=True) as http:
                resp = await http.get(image.url or "")
        except httpx.HTTPError as e:
            raise _wire.bad_request(f"{label}: cannot fetch the image URL: {type(e).__name__}: {e}") from None
        if resp.status_code != 200:
            raise _wire.bad_request(f"{label}: fetching the image URL gave HTTP {resp.status_code}")
        return resp.content

    # -- API

    async def get_models(self) -> list[ModelInfo]:
        return _wire.parse_models((await self._send(_wire.models_request())).body)

    async def get_model(self, name: str) -> ModelInfo:
        req = _wire.model_request(name)
        return _wire.parse_model((await self._send(req)).body, req.path)

    async def embeddings(self, texts: Sequence[str], model: str = _wire.DEFAULT_EMBEDDINGS_MODEL, *,
                         on_received: Callable[[], None] | None = None) -> EmbeddingsResult:
        """One /embeddings call; bodies over 256 KiB are decoded in a worker thread, off the event loop.

        on_received is called once the body has arrived, before it is decoded.
        """
        req = _wire.embeddings_request(texts, model)
        n = len(texts)
        if not n:
            return _empty(model)
        body = (await self._send(req)).body
        if on_received is not None:
            on_received()
        if len(body) > LARGE_BODY_BYTES:
            return await asyncio.to_thread(_wire.parse_embeddings, body, n)
        return _wire.parse_embeddings(body, n)

    async def tokens_count(self, texts: Sequence[str], model: str = "") -> list[int]:
        req = _wire.tokens_count_request(texts, model or self._chat_model)
        return _wire.parse_tokens_count((await self._send(req)).body, len(texts)) if len(texts) else []

    async def get_balance(self) -> dict[str, float]:
        return _wire.parse_balance((await self._send(_wire.balance_request())).body)

    async def upload_file(self, file: bytes | str | os.PathLike[str], filename: str = "", mime: str = "",
                          purpose: str = "general") -> str:
        """Upload to /files; returns the file id to put in a message's attachments."""
        data, name, mime = await asyncio.to_thread(self._file_args, file, filename, mime)
        return _wire.parse_file_id((await self._send(_wire.upload_request(data, name, mime, purpose))).body)

    async def chat(self, request: ChatRequest | Sequence[_chat_wire.MessageLike], **opts: Any) -> ChatReply:
        """One completion. Images are uploaded first; bad input raises BadRequestError before any call."""
        plan = self._plan(request, opts)
        req = plan.build(await self._upload_images(plan))
        return _chat_wire.parse_chat((await self._send(req)).body)

    def stream(self, request: ChatRequest | Sequence[_chat_wire.MessageLike], **opts: Any) -> AsyncIterator[ChatDelta]:
        """SSE deltas (`async for`); validation happens at the call, the request at the first step."""
        return self._iter_stream(self._plan(request, opts))

    astream = stream

    async def _iter_stream(self, plan: ChatPlan) -> AsyncIterator[ChatDelta]:
        req = plan.build(await self._upload_images(plan), stream=True)
        resp = await self._open_stream(req)
        decoder = _chat_wire.SSEDecoder(req.path)
        try:
            async for line in resp.aiter_lines():
                delta = decoder.feed(line)
                if delta is not None:
                    yield delta
                if decoder.done:
                    break
        except httpx.HTTPError as e:
            raise http.stream_error(e, req.path, self.settings.timeout_s, provider=_wire.PROVIDER,
                                    ca_hint=_wire.CA_HINT) from None
        finally:
            await resp.aclose()
        decoder.close()

    async def chat_structured(self, messages: ChatRequest | Sequence[_chat_wire.MessageLike],
                              schema: Mapping[str, Any], name: str = "structured_output", model: str = "",
                              **opts: Any) -> dict[str, Any]:
        """A dict matching `schema`, through a forced function call (litellm's emulation)."""
        plan = self._structured(messages, schema, name, model, opts)
        req = plan.build(await self._upload_images(plan))
        response = _chat_wire.parse_chat((await self._send(req)).body)
        return _chat_wire.structured_result(response, schema, name)
