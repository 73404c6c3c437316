"""GigaChat chat wire format: messages, images, function calls and structured output; chat bodies and SSE.

Pure and sync like _wire.py (whose helpers it uses); replies are the shared records of providers.chat.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import mimetypes
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from ...errors import NetworkError
from .. import http
from ..chat import ChatDelta, ChatReply, FunctionCall, Usage
from ._wire import (
    DEFAULT_CHAT_MODEL,
    PROVIDER,
    ApiRequest,
    as_int,
    bad_request,
    bad_response,
    dumps,
    loads,
    shape,
)

__all__ = ["ChatPlan", "ChatRequest", "Image", "Message", "SSEDecoder", "is_vision_model", "parse_chat",
           "plan_chat", "structured_function", "structured_result"]

MAX_IMAGE_BYTES = 15 * 1024 * 1024
MAX_IMAGES_PER_MESSAGE = 1
MAX_IMAGES_PER_CONVERSATION = 10
_VISION_PARTS = frozenset({"pro", "max", "ultra"})
_ROLES = frozenset({"system", "user", "assistant", "function", "search_result", "function_in_progress"})
_ROLE_ALIASES = {"tool": "function", "developer": "system"}
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"BM", "image/bmp"),
          (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"), (b"GIF8", "image/gif"))


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


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(*(as_int(raw.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens",
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


def parse_chat(body: bytes, endpoint: str = "/chat/completions") -> ChatReply:
    data = loads(body, endpoint)
    with shape(endpoint):
        choice = data["choices"][0]
        msg = choice["message"]
        return ChatReply(
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
        payload = http.sse_data(line)
        if payload is None or self.done:
            return None
        if payload == "[DONE]":
            self.done = True
            return None
        data = loads(payload.encode(), self.endpoint)
        if isinstance(data, dict) and "choices" not in data and "status" in data:
            raise http.error_for_status(as_int(data["status"]), payload.encode(), self.endpoint, provider=PROVIDER)
        with shape(self.endpoint):
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
            raise NetworkError("stream ended before completion (no finish_reason, no [DONE])", provider=PROVIDER,
                               endpoint=self.endpoint, status=200)


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


def structured_result(response: ChatReply, schema: Mapping[str, Any], name: str,
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
