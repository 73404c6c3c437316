"""GigaChat wire format: build request specs, parse response bodies, map statuses to our errors.

Pure and sync: no sockets, files or clocks. auth.py and client.py do the I/O around it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import http
import json
import mimetypes
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import PurePath
from typing import Any

import numpy as np
import orjson

from ...errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    ContentRefusedError,
    NetworkError,
    ProviderError,
    RateLimitError,
    RequestTooLargeError,
    ServerError,
)
from ..embeddings_json import decode_embeddings

__all__ = [
    "ApiRequest", "ChatDelta", "ChatPlan", "ChatRequest", "ChatResponse", "EmbeddingsResult",
    "FunctionCall", "Image", "Message", "ModelInfo", "RawResponse", "SSEDecoder", "Usage",
    "error_for_status", "is_vision_model", "plan_chat",
]

PROVIDER = "gigachat"
DEFAULT_EMBEDDINGS_MODEL = "Embeddings"
DEFAULT_CHAT_MODEL = "GigaChat-2"
MAX_IMAGE_BYTES = 15 * 1024 * 1024
MAX_IMAGES_PER_MESSAGE = 1
MAX_IMAGES_PER_CONVERSATION = 10
_VISION_PARTS = frozenset({"pro", "max", "ultra"})
_ROLES = frozenset({"system", "user", "assistant", "function", "search_result", "function_in_progress"})
_ROLE_ALIASES = {"tool": "function", "developer": "system"}
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"BM", "image/bmp"),
          (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"), (b"GIF8", "image/gif"))


# ---------------------------------------------------------------- value types


@dataclass(frozen=True)
class ApiRequest:
    """One REST call, relative to the base URL; `body` is JSON bytes, `file` a multipart upload."""

    method: str
    path: str
    body: bytes | None = None
    form: Mapping[str, str] | None = None
    file: tuple[str, bytes, str] | None = None
    stream: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RawResponse:
    """What the I/O shells hand back to the parsers."""

    status: int
    body: bytes
    content_type: str = ""
    retry_after: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    precached_prompt_tokens: int = 0


@dataclass(frozen=True)
class FunctionCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ChatResponse:
    """The first choice of a chat completion; finish_reason "blacklist" means the service refused."""

    content: str
    role: str = "assistant"
    function_call: FunctionCall | None = None
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    functions_state_id: str | None = None
    model: str = ""

    @property
    def refused(self) -> bool:
        return self.finish_reason == "blacklist"

    def raise_for_refusal(self) -> ChatResponse:
        """self, or ContentRefusedError when the service refused to answer (finish_reason blacklist)."""
        if self.refused:
            raise _err(ContentRefusedError, "the model refused to answer (finish_reason blacklist)",
                       "/chat/completions", 200)
        return self

    def message(self) -> dict[str, Any]:
        """This reply as an assistant message, ready to append to the conversation."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.function_call is not None:
            out["function_call"] = {"name": self.function_call.name, "arguments": self.function_call.arguments}
        if self.functions_state_id:
            out["functions_state_id"] = self.functions_state_id
        return out


@dataclass(frozen=True)
class ChatDelta:
    """One streamed piece: a content fragment, and on the last chunk finish_reason and usage."""

    content: str = ""
    role: str | None = None
    function_call: FunctionCall | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    functions_state_id: str | None = None
    model: str = ""


@dataclass(frozen=True, eq=False)
class EmbeddingsResult:
    vectors: np.ndarray  # float32, (n, dim), rows in input order
    tokens: list[int]  # per-text prompt tokens as the service billed them
    model: str


@dataclass(frozen=True)
class ModelInfo:
    id: str
    owned_by: str = ""
    type: str = ""


@dataclass(frozen=True)
class Image:
    """An image for a chat message: bytes, a local path or an http(s) URL (fetched by the client)."""

    data: bytes | None = None
    path: str | None = None
    url: str | None = None
    filename: str = ""
    mime: str = ""

    def __repr__(self) -> str:
        what = f"{len(self.data)} bytes" if self.data is not None else self.path or self.url
        return f"Image({what!r})"


ImageLike = Image | bytes | str | os.PathLike[str]


@dataclass(frozen=True)
class Message:
    role: str
    content: str = ""
    name: str | None = None
    function_call: FunctionCall | Mapping[str, Any] | None = None
    attachments: Sequence[str] = ()
    images: Sequence[ImageLike] = ()
    functions_state_id: str | None = None


MessageLike = Message | Mapping[str, Any]


@dataclass(frozen=True)
class ChatRequest:
    """A /chat/completions call; None fields are left out; `extra` is merged into the body last."""

    messages: Sequence[MessageLike]
    model: str = ""
    functions: Sequence[Mapping[str, Any]] | None = None
    function_call: str | Mapping[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    max_tokens: int | None = None
    repetition_penalty: float | None = None
    update_interval: float | None = None
    profanity_check: bool | None = None
    flags: Sequence[str] | None = None
    response_format: Mapping[str, Any] | None = None
    reasoning_effort: str | None = None
    storage: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    vision: bool | None = None  # client-side only: None infers it from the model name
    request_id: str = ""
    session_id: str = ""


_OPTION_FIELDS = ("temperature", "top_p", "n", "max_tokens", "repetition_penalty", "update_interval",
                  "profanity_check", "flags", "response_format", "reasoning_effort", "storage")


# ---------------------------------------------------------------- errors


def _err(cls: type[ProviderError], message: str, endpoint: str, status: int | None = None,
         **kw: Any) -> ProviderError:
    return cls(message, provider=PROVIDER, endpoint=endpoint, status=status, **kw)


def bad_response(endpoint: str, message: str, status: int | None = 200) -> BadResponseError:
    err = _err(BadResponseError, message, endpoint, status)
    assert isinstance(err, BadResponseError)
    return err


def bad_request(message: str, endpoint: str = "") -> BadRequestError:
    """A request refused on our side, before anything was sent."""
    err = _err(BadRequestError, message, endpoint)
    assert isinstance(err, BadRequestError)
    return err


def server_message(status: int, body: bytes) -> str:
    """The server's `message` field, else the start of the body, else the status phrase."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error_description", "error"):
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
    """Retry-After as seconds (a number or an HTTP date); None when absent or unreadable."""
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


def error_for_status(status: int, body: bytes, endpoint: str, *, retry_after: str | None = None,
                     oauth: bool = False, now: float | None = None, hint: str = "") -> ProviderError:
    """The exception for a non-2xx answer; its message names status, endpoint and the server's message."""
    message = server_message(status, body) + (f" ({hint})" if hint else "")
    if status in (401, 403) or (oauth and status == 400):
        return _err(AuthError, message, endpoint, status)
    if status == 429:
        wait = parse_retry_after(retry_after, now=now)
        message += f" (retry after {wait:g} s)" if wait is not None else ""
        return _err(RateLimitError, message, endpoint, status, retry_after=wait)
    if status == 413:
        return _err(RequestTooLargeError, message, endpoint, status)
    if status in (400, 404, 422):
        return _err(BadRequestError, message, endpoint, status)
    if status >= 500:
        return _err(ServerError, message, endpoint, status)
    return _err(ProviderError, message, endpoint, status, retryable=False)


# ---------------------------------------------------------------- JSON helpers


def dumps(obj: Any) -> bytes:
    """JSON with raw UTF-8 (no \\u escapes), as Sber's SDK sends it."""
    return orjson.dumps(obj)


def loads(body: bytes, endpoint: str, status: int = 200) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        what = "an empty body" if not body.strip() else f"invalid or truncated JSON ({e})"
        raise bad_response(endpoint, f"{what} ({len(body)} bytes)", status) from None


@contextmanager
def _shape(endpoint: str) -> Iterator[None]:
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise bad_response(endpoint, f"unexpected response shape: {type(e).__name__}: {e}") from None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return int(value)


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(*(_int(raw.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens",
                                                    "precached_prompt_tokens")))


def _function_call(raw: Any) -> FunctionCall | None:
    if not raw:
        return None
    args = raw.get("arguments")
    if isinstance(args, str):
        args = json.loads(args) if args.strip() else {}
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise TypeError("function_call.arguments is not a JSON object")
    return FunctionCall(name=str(raw["name"]), arguments=args)


# ---------------------------------------------------------------- tokens and headers


def parse_token(body: bytes, endpoint: str) -> tuple[str, int]:
    """(access token, expires_at in ms; 0 = no expiry) from {access_token, expires_at} or {tok, exp}."""
    data = loads(body, endpoint)
    with _shape(endpoint):
        token = data.get("access_token") or data.get("tok")
        if not isinstance(token, str) or not token:
            raise ValueError("no access_token in the token response")
        expires = _int(data.get("expires_at") or data.get("exp") or 0)
    if 0 < expires < 100_000_000_000:  # a 10-digit value is seconds (one DOC sample), not ms
        expires *= 1000
    return token, expires



def api_headers(token: str, *, json_body: bool, stream: bool = False, request_id: str = "",
                session_id: str = "", user_agent: str = "") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}",
               "Accept": "text/event-stream" if stream else "application/json"}
    if user_agent:
        headers["User-Agent"] = user_agent
    if json_body:
        headers["Content-Type"] = "application/json"
    if stream:
        headers["Cache-Control"] = "no-store"
    if request_id:
        headers["X-Request-ID"] = request_id
    if session_id:
        headers["X-Session-ID"] = session_id
    return headers


# ---------------------------------------------------------------- models, balance, files, tokens


def models_request() -> ApiRequest:
    return ApiRequest("GET", "/models")


def model_request(name: str) -> ApiRequest:
    if not name or "/" in name:
        raise bad_request(f"invalid model name {name!r}", "/models")
    return ApiRequest("GET", f"/models/{name}")


def _model_info(raw: Any) -> ModelInfo:
    return ModelInfo(id=str(raw["id"]), owned_by=str(raw.get("owned_by", "")), type=str(raw.get("type", "")))


def parse_models(body: bytes, endpoint: str = "/models") -> list[ModelInfo]:
    data = loads(body, endpoint)
    with _shape(endpoint):
        return [_model_info(item) for item in data["data"]]


def parse_model(body: bytes, endpoint: str) -> ModelInfo:
    data = loads(body, endpoint)
    with _shape(endpoint):
        return _model_info(data)


def balance_request() -> ApiRequest:
    return ApiRequest("GET", "/balance")


def parse_balance(body: bytes, endpoint: str = "/balance") -> dict[str, float]:
    data = loads(body, endpoint)
    with _shape(endpoint):
        return {str(item["usage"]): float(item["value"]) for item in data["balance"]}


def upload_request(data: bytes, filename: str, mime: str, purpose: str = "general") -> ApiRequest:
    return ApiRequest("POST", "/files", form={"purpose": purpose}, file=(filename, data, mime))


def parse_file_id(body: bytes, endpoint: str = "/files") -> str:
    data = loads(body, endpoint)
    with _shape(endpoint):
        file_id = data["id"]
        if not isinstance(file_id, str) or not file_id:
            raise ValueError("no file id")
        return file_id


def _texts(texts: Sequence[str], endpoint: str) -> list[str]:
    if isinstance(texts, str):
        raise bad_request("expected a sequence of texts, got one str", endpoint)
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise bad_request(f"text {i} is a {type(t).__name__}, not a str", endpoint)
    return out


def tokens_count_request(texts: Sequence[str], model: str) -> ApiRequest:
    return ApiRequest("POST", "/tokens/count", body=dumps({"model": model, "input": _texts(texts, "/tokens/count")}))


def parse_tokens_count(body: bytes, n: int, endpoint: str = "/tokens/count") -> list[int]:
    data = loads(body, endpoint)
    with _shape(endpoint):
        counts = [_int(item["tokens"]) for item in data]
    if len(counts) != n:
        raise bad_response(endpoint, f"{len(counts)} token counts for {n} texts")
    return counts


# ---------------------------------------------------------------- embeddings


def embeddings_request(texts: Sequence[str], model: str) -> ApiRequest:
    return ApiRequest("POST", "/embeddings", body=dumps({"model": model, "input": _texts(texts, "/embeddings")}))


def parse_embeddings(body: bytes, n: int, endpoint: str = "/embeddings") -> EmbeddingsResult:
    """Vectors in input order; any count, index, dimension or value problem is a BadResponseError."""
    # The fast decode's vectors are already checked: equal nonzero dimensions, all finite. When it
    # declines, the full parse below finds what is wrong and says so.
    fast = decode_embeddings(body)
    data = loads(body, endpoint) if fast is None else fast[0]
    with _shape(endpoint):
        items = data["data"]
        if not isinstance(items, list):
            raise TypeError("data is not a list")
        model = str(data.get("model") or "")
        if len(items) != n:
            raise bad_response(endpoint, f"{len(items)} vectors for {n} texts")
        ranked = sorted(enumerate(items), key=lambda pair: _int(pair[1]["index"]))
        order = [i for i, _ in ranked]
        items = [it for _, it in ranked]
        indices = [_int(it["index"]) for it in items]
        if indices != list(range(n)):
            raise bad_response(endpoint, f"vector indices are not 0..{n - 1}: {indices[:10]}")
        if fast is None:
            rows = [it["embedding"] for it in items]
            if not all(isinstance(r, list) for r in rows):
                raise bad_response(endpoint, "an embedding is not a list of numbers")
            dims = {len(r) for r in rows}
            if len(dims) > 1 or 0 in dims:
                raise bad_response(endpoint, f"vectors of different or zero dimensions: {sorted(dims)}")
        tokens = [_int((it.get("usage") or {}).get("prompt_tokens") or 0) for it in items]
    if fast is not None:
        return EmbeddingsResult(vectors=fast[1][order], tokens=tokens, model=model)
    try:
        vectors = np.array(rows, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise bad_response(endpoint, f"an embedding holds a non-number: {e}") from None
    if n and not np.isfinite(vectors).all():
        raise bad_response(endpoint, "an embedding holds null, NaN or infinite values")
    return EmbeddingsResult(vectors=vectors.reshape(n, -1) if n else vectors, tokens=tokens, model=model)


# ---------------------------------------------------------------- chat


def is_vision_model(model: str) -> bool:
    """True when a dash-separated part of the name is Pro, Max or Ultra (GigaChat-2-Pro, GigaChat-2-Max)."""
    base = model.split(":", 1)[0].lower().removesuffix("-preview")
    return any(part in _VISION_PARTS for part in base.split("-")[1:])


def sniff_image_mime(data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return ""


def _image_of(value: Any, where: str) -> Image:
    if isinstance(value, Image):
        if value.data is None and not value.path and not value.url:
            raise bad_request(f"{where}: an Image needs data, a path or a url")
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Image(data=bytes(value))
    if isinstance(value, os.PathLike):
        return Image(path=os.fspath(value))
    if isinstance(value, str):
        if value.startswith("data:"):
            return _data_url(value, where)
        if value.startswith(("http://", "https://")):
            return Image(url=value)
        return Image(path=value)
    raise bad_request(f"{where}: cannot use a {type(value).__name__} as an image")


def _data_url(url: str, where: str) -> Image:
    head, _, payload = url.partition(",")
    if not head.endswith(";base64"):
        raise bad_request(f"{where}: only base64 data: URLs are supported")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where}: the data: URL is not valid base64") from None
    return Image(data=data, mime=head[5:].removesuffix(";base64"))


def image_file(image: Image, data: bytes, label: str) -> tuple[str, str]:
    """(filename, mime) for an upload; refuses images over MAX_IMAGE_BYTES or of unknown format."""
    check_image_size(len(data), label)
    mime = image.mime or sniff_image_mime(data)
    name = image.filename or (PurePath(image.path).name if image.path else "")
    if not mime and name:
        mime = mimetypes.guess_type(name)[0] or ""
    if not mime.startswith("image/"):
        raise bad_request(f"{label}: not a recognised image format (jpeg, png, tiff, bmp); pass Image(mime=...)")
    if not name:
        name = "image" + (mimetypes.guess_extension(mime) or ".bin")
    return name, mime


def check_image_size(size: int, label: str) -> None:
    if size > MAX_IMAGE_BYTES:
        raise bad_request(f"{label}: image of {size / 1e6:.1f} MB exceeds the 15 MB limit per image")


def _json_string(content: Any) -> str:
    """Function results must be a JSON string; wrap anything else with json.dumps."""
    if isinstance(content, str):
        try:
            json.loads(content)
            return content
        except ValueError:
            pass
    return json.dumps(content, ensure_ascii=False)


def _message(raw: MessageLike, i: int) -> tuple[dict[str, Any], list[Image]]:
    where = f"message {i}"
    if isinstance(raw, Message):
        raw = {k: getattr(raw, k) for k in Message.__dataclass_fields__}
    elif not isinstance(raw, Mapping):
        raise bad_request(f"{where}: expected a Message or a dict, got {type(raw).__name__}")
    role = _ROLE_ALIASES.get(str(raw.get("role")), str(raw.get("role")))
    if role not in _ROLES:
        raise bad_request(f"{where}: unknown role {raw.get('role')!r}")
    images = [_image_of(v, where) for v in raw.get("images") or ()]
    content: Any = raw.get("content")
    if isinstance(content, list) and role != "function":  # OpenAI-style parts: text and image_url
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                url = part["image_url"]
                images.append(_image_of(url.get("url") if isinstance(url, Mapping) else url, where))
            else:
                raise bad_request(f"{where}: unsupported content part {kind!r}")
        content = "\n".join(texts)
    out: dict[str, Any] = {"role": role}
    if role == "function":
        out["content"] = _json_string("" if content is None else content)
    elif content is None or isinstance(content, str):
        out["content"] = content or ""
    else:
        raise bad_request(f"{where}: content must be a str, got {type(content).__name__}")
    calls = raw.get("tool_calls") or []
    if len(calls) > 1:
        raise bad_request(f"{where}: GigaChat does not support parallel function calls (one per turn)")
    fc = raw.get("function_call") or (calls[0].get("function") if calls else None)
    if fc:
        if isinstance(fc, FunctionCall):
            fc = {"name": fc.name, "arguments": fc.arguments}
        try:
            parsed = _function_call(fc)
        except (KeyError, TypeError, ValueError) as e:
            raise bad_request(f"{where}: bad function_call: {e}") from None
        assert parsed is not None
        out["function_call"] = {"name": parsed.name, "arguments": parsed.arguments}
    for key in ("name", "functions_state_id", "reasoning_content", "id"):
        if raw.get(key):
            out[key] = raw[key]
    if raw.get("attachments"):
        out["attachments"] = list(raw["attachments"])
    return out, images


def _fill_properties(schema: Any) -> Any:
    """The API 422s on an object schema without `properties`: add empty ones at every level."""
    if isinstance(schema, dict):
        out = {k: _fill_properties(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" not in out:
            out["properties"] = {}
        return out
    if isinstance(schema, list):
        return [_fill_properties(v) for v in schema]
    return schema


def _function(raw: Mapping[str, Any]) -> dict[str, Any]:
    fn = dict(raw.get("function", raw)) if raw.get("type") == "function" else dict(raw)
    if not fn.get("name"):
        raise bad_request("a function definition has no name")
    fn["parameters"] = _fill_properties(fn.get("parameters") or {"type": "object", "properties": {}})
    return fn


def _function_choice(raw: str | Mapping[str, Any], names: set[str]) -> str | dict[str, Any]:
    if isinstance(raw, str):
        if raw in ("auto", "none"):
            return raw
        raw = {"name": raw}
    choice = dict(raw)
    if choice.get("type") == "function":  # OpenAI tool_choice
        choice = {"name": choice["function"]["name"]}
    if choice.get("name") not in names:
        raise bad_request(f"function_call forces {choice.get('name')!r}, which is not among the functions")
    return choice


@dataclass(frozen=True)
class ChatPlan:
    """A validated chat body; `images` (message index, image) still have to be uploaded."""

    body: dict[str, Any]
    images: tuple[tuple[int, Image], ...]
    headers: Mapping[str, str]

    def build(self, file_ids: Sequence[str] = (), *, stream: bool = False) -> ApiRequest:
        if len(file_ids) != len(self.images):
            raise ValueError("one file id per image")
        body = copy.deepcopy(self.body)
        for (index, _), file_id in zip(self.images, file_ids, strict=True):
            body["messages"][index].setdefault("attachments", []).append(file_id)
        if stream:
            body["stream"] = True
        return ApiRequest("POST", "/chat/completions", body=dumps(body), stream=stream, headers=self.headers)


def plan_chat(request: ChatRequest, *, default_model: str = DEFAULT_CHAT_MODEL) -> ChatPlan:
    """Validate and build a chat body. Raises BadRequestError before anything is sent."""
    model = request.model or default_model
    messages, images = [], []
    for i, raw in enumerate(request.messages):
        msg, imgs = _message(raw, i)
        if msg["role"] == "system" and i != 0:
            raise bad_request(f"message {i}: a system message must be the first message")
        if len(imgs) > MAX_IMAGES_PER_MESSAGE:
            raise bad_request(f"message {i}: {len(imgs)} images; GigaChat takes at most 1 image per message")
        messages.append(msg)
        images += [(i, img) for img in imgs]
    if not messages:
        raise bad_request("no messages")
    if len(images) > MAX_IMAGES_PER_CONVERSATION:
        raise bad_request(f"{len(images)} images; GigaChat takes at most 10 images per conversation")
    if images and not (request.vision if request.vision is not None else is_vision_model(model)):
        raise bad_request(f"model {model!r} does not take images; use GigaChat-2-Pro or GigaChat-2-Max")
    body: dict[str, Any] = {"model": model, "messages": messages}
    functions = [_function(f) for f in request.functions or ()]
    if functions:
        body["functions"] = functions
    if request.function_call is not None:
        body["function_call"] = _function_choice(request.function_call, {f["name"] for f in functions})
    for name in _OPTION_FIELDS:
        value = getattr(request, name)
        if value is not None:
            body[name] = list(value) if name == "flags" else value
    body.update(request.extra)
    headers = {k: v for k, v in (("X-Request-ID", request.request_id), ("X-Session-ID", request.session_id)) if v}
    return ChatPlan(body=body, images=tuple(images), headers=headers)


def parse_chat(body: bytes, endpoint: str = "/chat/completions") -> ChatResponse:
    data = loads(body, endpoint)
    with _shape(endpoint):
        choice = data["choices"][0]
        msg = choice["message"]
        return ChatResponse(
            content=str(msg.get("content") or ""),
            role=str(msg.get("role") or "assistant"),
            function_call=_function_call(msg.get("function_call")),
            finish_reason=choice.get("finish_reason"),
            usage=_usage(data.get("usage")),
            functions_state_id=msg.get("functions_state_id"),
            model=str(data.get("model") or ""),
        )


class SSEDecoder:
    """Turns the lines of a text/event-stream body into ChatDeltas; close() checks the stream completed."""

    def __init__(self, endpoint: str = "/chat/completions") -> None:
        self.endpoint = endpoint
        self.done = False
        self.finish_reason: str | None = None

    def feed(self, line: str) -> ChatDelta | None:
        line = line.strip()
        if not line.startswith("data:") or self.done:
            return None
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return None
        data = loads(payload.encode(), self.endpoint)
        if isinstance(data, dict) and "choices" not in data and "status" in data:
            raise error_for_status(_int(data["status"]), payload.encode(), self.endpoint)
        with _shape(self.endpoint):
            choice = data["choices"][0]
            delta = choice.get("delta") or {}
            out = ChatDelta(
                content=str(delta.get("content") or ""),
                role=delta.get("role"),
                function_call=_function_call(delta.get("function_call")),
                finish_reason=choice.get("finish_reason"),
                usage=_usage(data["usage"]) if data.get("usage") else None,
                functions_state_id=delta.get("functions_state_id"),
                model=str(data.get("model") or ""),
            )
        self.finish_reason = out.finish_reason or self.finish_reason
        return out

    def close(self) -> None:
        if not self.done and self.finish_reason is None:
            raise _err(NetworkError, "stream ended before completion (no finish_reason, no [DONE])",
                       self.endpoint, 200)


# ---------------------------------------------------------------- structured output


def structured_function(schema: Mapping[str, Any], name: str) -> dict[str, Any]:
    """litellm's trick: a function whose parameters are the schema, to be forced with function_call."""
    if schema.get("type", "object") != "object":
        raise bad_request("a structured-output schema must describe an object")
    params = _fill_properties({"type": "object", **schema})
    return {"name": name, "description": f"Output structured response: {name}", "parameters": params}


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "array": (list,), "object": (dict,), "null": (type(None),)}


def structured_result(response: ChatResponse, schema: Mapping[str, Any], name: str,
                      endpoint: str = "/chat/completions") -> dict[str, Any]:
    """The forced call's arguments; BadResponseError when missing, or a required key or top-level type is off."""
    fc = response.function_call
    if fc is None or fc.name != name:
        got = f"function {fc.name!r}" if fc else f"finish_reason {response.finish_reason!r}"
        raise bad_response(endpoint, f"expected a call of {name!r} with the structured output, got {got}")
    args = fc.arguments
    missing = [k for k in schema.get("required", ()) if k not in args]
    if missing:
        raise bad_response(endpoint, f"structured output lacks required keys {missing}")
    for key, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type") if isinstance(prop, Mapping) else None
        types = _JSON_TYPES.get(kind) if isinstance(kind, str) else None  # unions like ["string", "null"]: skip
        value = args.get(key)
        if key in args and types and (not isinstance(value, types) or
                                      (isinstance(value, bool) and bool not in types)):
            raise bad_response(endpoint, f"structured output key {key!r} is not of type {kind!r}")
    return args
