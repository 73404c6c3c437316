"""Emulator routes: the GigaChat OAuth and REST endpoints as one Starlette app.

Endpoints only: vectors come from vectors.py, answers from chat.py, limits and counters from gateway.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .chat import (
    CHAT_MODELS,
    MODEL_BUILD,
    ChatError,
    StoredFile,
    complete,
    count_tokens,
    image_info,
    split_deltas,
)
from .gateway import (
    DUE_KEY,
    JSON_TYPE,
    OAUTH_PATH,
    ApiError,
    EmulatorState,
    Gateway,
    Guard,
    Stats,
    json_response,
    rest_error,
)
from .profile import EmulatorProfile
from .vectors import EMBEDDERS, embed_texts, embedding_tokens

SCOPES = frozenset({"GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP"})
MAX_IMAGE_BYTES = 15 * 1024 * 1024  # one image ≤ 15 MB (§8)
CHAT_BALANCE, EMBEDDINGS_BALANCE = 1_000_000, 10_000_000  # prepaid tokens before any use
_RQUID = re.compile(r"[0-9a-fA-F-]{36}")  # the pattern the OAuth docs give for RqUID


def oauth_error(status: int, code: int, message: str) -> ApiError:
    """An error in the OAuth host's shape: {"code", "message"}."""
    return ApiError(status, {"code": code, "message": message})


class _EventStream(Response):
    """An SSE body sent event by event; with a `limit`, the connection is cut after that many events."""

    def __init__(self, events: list[bytes], limit: int | None, stats: Stats) -> None:
        super().__init__(media_type="text/event-stream")
        self.events = events
        self.limit = limit
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        # The last event is [DONE]: a cut stream never sends it.
        count = len(self.events) if self.limit is None else min(self.limit, len(self.events) - 1)
        for event in self.events[:count]:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if count < len(self.events):
            self.stats.streams_broken += 1
            return  # returning with the body unfinished makes uvicorn close the connection
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _CutResponse(Response):
    """Headers and half of the body, then the connection closes: a drop in the middle of a response."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send(
            {"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True}
        )


def _embeddings_body(model: str, texts: list[str], tokens: list[int], returned: int) -> bytes:
    """The JSON body of an embeddings answer with the first `returned` vectors: the call's CPU work."""
    vectors = embed_texts(model, texts)
    data = [
        {"object": "embedding", "embedding": vectors[i], "index": i, "usage": {"prompt_tokens": tokens[i]}}
        for i in range(returned)
    ]
    return orjson.dumps({"object": "list", "data": data, "model": model}, option=orjson.OPT_SERIALIZE_NUMPY)


def _model_card(model_id: str, kind: str) -> dict[str, str]:
    return {"id": model_id, "object": "model", "owned_by": "salutedevices", "type": kind}


_MODELS = {m: _model_card(m, "chat") for m in CHAT_MODELS} | {
    m: _model_card(m, "embedder") for m in EMBEDDERS
}


def _file_card(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": len(stored.data),
        "created_at": stored.created_at,
        "filename": stored.filename,
        "purpose": stored.purpose,
        "access_policy": "private",
    }


class _Api:
    """The endpoints; each REST one checks the bearer token first, as the real service does."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def oauth(self, request: Request) -> Response:
        if not _RQUID.fullmatch(request.headers.get("rquid", "")):
            raise oauth_error(400, 400, "RqUID header is missing or does not match [0-9a-fA-F-]{36}")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        try:
            base64.b64decode(credentials.strip(), validate=True)
        except (ValueError, binascii.Error):
            credentials = ""
        if scheme.lower() != "basic" or not credentials.strip():
            raise oauth_error(401, 4, "Can't decode 'Authorization' header")
        if credentials.strip() != self.state.profile.credentials:
            raise oauth_error(401, 6, "credentials doesn't match db data")
        scope = (await request.form()).get("scope")
        if not scope:
            raise oauth_error(400, 5, "scope is empty")
        if scope not in SCOPES:
            raise oauth_error(400, 1, "scope data format invalid")
        token, expires_at = self.state.issue_token(str(scope))
        return json_response({"access_token": token, "expires_at": expires_at})

    async def password_token(self, request: Request) -> Response:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (ValueError, binascii.Error):
            user = password = ""
        profile = self.state.profile
        if scheme.lower() != "basic" or (user, password) != (profile.user, profile.password):
            raise rest_error(401, "Unauthorized: wrong user or password")
        token, expires_at = self.state.issue_token("GIGACHAT_API_PERS")
        return json_response({"tok": token, "exp": expires_at})

    async def models(self, request: Request) -> Response:
        self.state.authorize(request)
        return json_response({"object": "list", "data": list(_MODELS.values())})

    async def model(self, request: Request) -> Response:
        self.state.authorize(request)
        card = _MODELS.get(request.path_params["model_id"])
        if card is None:
            raise rest_error(404, "No such model")
        return json_response(card)

    async def embeddings(self, request: Request) -> Response:
        self.state.authorize(request)
        body = await _json_body(request)
        embedder = EMBEDDERS.get(str(body.get("model")))
        if embedder is None:
            raise rest_error(404, "No such model")
        texts = body.get("input")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise rest_error(422, "Invalid params: input must be a list of strings")
        if not texts:
            raise rest_error(400, "Invalid params: input must not be empty")
        profile = self.state.profile
        if profile.max_texts_per_request and len(texts) > profile.max_texts_per_request:
            raise rest_error(
                413, f"Too many texts: {len(texts)} > {profile.max_texts_per_request} per request"
            )
        tokens = [embedding_tokens(t) for t in texts]
        for index, count in enumerate(tokens):
            if count > embedder.max_input_tokens:
                raise rest_error(
                    413,
                    f"Input {index} is too long: {count} tokens, {embedder.name} takes {embedder.max_input_tokens}",
                )
        returned = len(texts)
        dropped = self.state.roll("drop", profile.drop_rate)
        wrong_count = not dropped and self.state.roll("count", profile.wrong_count_rate)
        if wrong_count:
            returned -= 1  # the last vector goes missing, as a client's count check must notice
        # Latency includes compute, as a real server's does: vectors and body first, then sleep only what is
        # left of base + jitter + per_text_latency_ms per text, counted from the request's arrival.
        due = request.scope.get(DUE_KEY, time.monotonic()) + profile.per_text_latency_ms * len(texts) / 1000
        # Off the event loop: 100 texts at 2560-d take 10-20 ms of CPU that would delay every other call.
        body_bytes = await asyncio.to_thread(_embeddings_body, embedder.name, texts, tokens, returned)
        remaining_s = due - time.monotonic()
        if remaining_s > 0:
            await asyncio.sleep(remaining_s)
        if dropped:
            self.state.stats.connections_dropped += 1
            return _CutResponse(body_bytes, media_type=JSON_TYPE)
        if wrong_count:
            self.state.stats.wrong_counts += 1
        self.state.stats.texts_embedded += returned
        self.state.stats.embedding_tokens += sum(tokens[:returned])
        return Response(body_bytes, media_type=JSON_TYPE)

    async def tokens_count(self, request: Request) -> Response:
        self.state.authorize(request)
        body = await _json_body(request)
        if body.get("model") not in _MODELS:
            raise rest_error(404, "No such model")
        texts = body.get("input")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise rest_error(422, "Invalid params: input must be a list of strings")
        return json_response(
            [{"object": "tokens", "tokens": count_tokens(t), "characters": len(t)} for t in texts]
        )

    async def chat_completions(self, request: Request) -> Response:
        self.state.authorize(request)
        body = await _json_body(request)
        try:
            completion = complete(body, self.state.files, self.state.profile.blacklist_word)
        except ChatError as error:
            raise rest_error(error.status, error.message) from None
        usage = {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
            "precached_prompt_tokens": 0,
        }
        self.state.stats.chat_tokens += usage["total_tokens"]
        envelope = {
            "created": int(time.time()),
            "model": f"{body['model']}:{MODEL_BUILD}",
            "object": "chat.completion",
        }
        message: dict[str, Any] = {"role": "assistant", "content": completion.content}
        if completion.function_call is not None:
            message |= {
                "function_call": completion.function_call,
                "functions_state_id": completion.functions_state_id,
            }
        if not body.get("stream"):
            choice = {"message": message, "index": 0, "finish_reason": completion.finish_reason}
            return json_response({"choices": [choice], **envelope, "usage": usage})
        if completion.function_call is not None:
            deltas = [message]  # the whole call in one chunk, arguments as an object (§5.5)
        else:
            deltas = [{"content": piece} for piece in split_deltas(completion.content)]
            deltas[0] = {"role": "assistant", **deltas[0]}
            deltas.append({"content": ""})
        chunks: list[dict[str, Any]] = [{"choices": [{"delta": d, "index": 0}], **envelope} for d in deltas]
        chunks[-1]["choices"][0]["finish_reason"] = completion.finish_reason
        chunks[-1]["usage"] = usage
        events = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks] + [b"data: [DONE]\n\n"]
        return _EventStream(events, self.state.profile.stream_break_after, self.state.stats)

    async def upload_file(self, request: Request) -> Response:
        self.state.authorize(request)
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose") or "general"
        if not isinstance(upload, UploadFile):
            raise rest_error(400, "Invalid params: multipart field 'file' is required")
        if purpose not in ("general", "assistant"):
            raise rest_error(422, "Invalid params: purpose must be 'general' or 'assistant'")
        data = await upload.read()
        if len(data) > MAX_IMAGE_BYTES:
            raise rest_error(413, f"File is too large: {len(data)} bytes > {MAX_IMAGE_BYTES}")
        info = image_info(data)
        if info is None:
            raise rest_error(
                422, "Unsupported file format: the emulator stores image/jpeg and image/png only"
            )
        stored = StoredFile(
            id=str(uuid.uuid4()),
            filename=upload.filename or "file",
            data=data,
            purpose=str(purpose),
            created_at=int(time.time()),
            content_type=f"image/{info[0].lower()}",
        )
        self.state.files[stored.id] = stored
        return json_response(_file_card(stored))

    async def list_files(self, request: Request) -> Response:
        self.state.authorize(request)
        return json_response({"data": [_file_card(f) for f in self.state.files.values()]})

    async def get_file(self, request: Request) -> Response:
        self.state.authorize(request)
        return json_response(_file_card(self._file(request)))

    async def file_content(self, request: Request) -> Response:
        self.state.authorize(request)
        stored = self._file(request)
        return Response(stored.data, media_type=stored.content_type)

    async def delete_file(self, request: Request) -> Response:
        self.state.authorize(request)
        stored = self._file(request)
        del self.state.files[stored.id]
        return json_response({"id": stored.id, "object": "file", "deleted": True})

    async def balance(self, request: Request) -> Response:
        token = self.state.authorize(request)
        if token.scope == "GIGACHAT_API_CORP":
            raise rest_error(403, "Forbidden: the balance is only available to prepaid clients")
        stats = self.state.stats
        return json_response(
            {
                "balance": [
                    {"usage": "GigaChat", "value": CHAT_BALANCE - stats.chat_tokens},
                    {"usage": "embeddings", "value": EMBEDDINGS_BALANCE - stats.embedding_tokens},
                ]
            }
        )

    async def stats(self, request: Request) -> Response:
        return json_response(self.state.stats.snapshot())

    async def reset_stats(self, request: Request) -> Response:
        self.state.stats.reset()
        return json_response(self.state.stats.snapshot())

    async def expire_tokens(self, request: Request) -> Response:
        return json_response({"expired": self.state.expire_tokens()})

    def _file(self, request: Request) -> StoredFile:
        stored = self.state.files.get(request.path_params["file_id"])
        if stored is None:
            raise rest_error(404, "No such file")
        return stored


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise rest_error(400, "Invalid JSON body") from None
    if not isinstance(body, dict):
        raise rest_error(400, "Invalid params: the body must be a JSON object")
    return body


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response(exc.body, exc.status, exc.headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer in the REST error shape too, not Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    return json_response({"status": exc.status_code, "message": exc.detail}, exc.status_code, exc.headers)


def create_app(profile: EmulatorProfile) -> Starlette:
    """The emulator as an ASGI app; its EmulatorState is `app.state.emulator`."""
    state = EmulatorState(profile)
    api = _Api(state)
    v1 = "/api/v1"
    routes = [
        Route(OAUTH_PATH, api.oauth, methods=["POST"]),
        Route(f"{v1}/token", api.password_token, methods=["POST"]),
        Route(f"{v1}/models", api.models, methods=["GET"]),
        Route(f"{v1}/models/{{model_id}}", api.model, methods=["GET"]),
        Route(f"{v1}/embeddings", api.embeddings, methods=["POST"]),
        Route(f"{v1}/tokens/count", api.tokens_count, methods=["POST"]),
        Route(f"{v1}/chat/completions", api.chat_completions, methods=["POST"]),
        Route(f"{v1}/files", api.upload_file, methods=["POST"]),
        Route(f"{v1}/files", api.list_files, methods=["GET"]),
        Route(f"{v1}/files/{{file_id}}", api.get_file, methods=["GET"]),
        Route(f"{v1}/files/{{file_id}}/content", api.file_content, methods=["GET"]),
        Route(f"{v1}/files/{{file_id}}/delete", api.delete_file, methods=["POST"]),
        Route(f"{v1}/balance", api.balance, methods=["GET"]),
        Route("/_stats", api.stats, methods=["GET"]),
        Route("/_stats/reset", api.reset_stats, methods=["POST"]),
        Route("/_admin/expire_tokens", api.expire_tokens, methods=["POST"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Any]] = {
        ApiError: _on_api_error,
        HTTPException: _on_http_error,
    }
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Gateway, state=state, routes=routes), Middleware(Guard, state=state)],
        exception_handlers=handlers,
    )
    app.state.emulator = state
    return app
