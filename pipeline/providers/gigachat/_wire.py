"""GigaChat wire format: REST request specs and response parsers (tokens, models, files, embeddings).

Pure and sync: no sockets, files or clocks; statuses map to errors in providers.http, chat lives in _chat_wire.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ...errors import BadRequestError, BadResponseError
from ..embeddings_json import decode_embeddings

__all__ = ["ApiRequest", "EmbeddingsResult", "ModelInfo", "RawResponse", "bad_request", "bad_response"]

PROVIDER = "gigachat"
CA_HINT = "set GIGACHAT_CA_BUNDLE_FILE to a bundle holding the Russian Trusted Root CA"
DEFAULT_EMBEDDINGS_MODEL = "Embeddings"
DEFAULT_CHAT_MODEL = "GigaChat-2"

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


# ---------------------------------------------------------------- errors


def bad_response(endpoint: str, message: str, status: int | None = 200) -> BadResponseError:
    return BadResponseError(message, provider=PROVIDER, endpoint=endpoint, status=status)


def bad_request(message: str, endpoint: str = "") -> BadRequestError:
    """A request refused on our side, before anything was sent."""
    return BadRequestError(message, provider=PROVIDER, endpoint=endpoint)


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
def shape(endpoint: str) -> Iterator[None]:
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise bad_response(endpoint, f"unexpected response shape: {type(e).__name__}: {e}") from None


def as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return int(value)


# ---------------------------------------------------------------- tokens and headers


def parse_token(body: bytes, endpoint: str) -> tuple[str, int]:
    """(access token, expires_at in ms; 0 = no expiry) from {access_token, expires_at} or {tok, exp}."""
    data = loads(body, endpoint)
    with shape(endpoint):
        token = data.get("access_token") or data.get("tok")
        if not isinstance(token, str) or not token:
            raise ValueError("no access_token in the token response")
        expires = as_int(data.get("expires_at") or data.get("exp") or 0)
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
    with shape(endpoint):
        return [_model_info(item) for item in data["data"]]


def parse_model(body: bytes, endpoint: str) -> ModelInfo:
    data = loads(body, endpoint)
    with shape(endpoint):
        return _model_info(data)


def balance_request() -> ApiRequest:
    return ApiRequest("GET", "/balance")


def parse_balance(body: bytes, endpoint: str = "/balance") -> dict[str, float]:
    data = loads(body, endpoint)
    with shape(endpoint):
        return {str(item["usage"]): float(item["value"]) for item in data["balance"]}


def upload_request(data: bytes, filename: str, mime: str, purpose: str = "general") -> ApiRequest:
    return ApiRequest("POST", "/files", form={"purpose": purpose}, file=(filename, data, mime))


def parse_file_id(body: bytes, endpoint: str = "/files") -> str:
    data = loads(body, endpoint)
    with shape(endpoint):
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
    with shape(endpoint):
        counts = [as_int(item["tokens"]) for item in data]
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
    with shape(endpoint):
        items = data["data"]
        if not isinstance(items, list):
            raise TypeError("data is not a list")
        model = str(data.get("model") or "")
        if len(items) != n:
            raise bad_response(endpoint, f"{len(items)} vectors for {n} texts")
        ranked = sorted(enumerate(items), key=lambda pair: as_int(pair[1]["index"]))
        order = [i for i, _ in ranked]
        items = [it for _, it in ranked]
        indices = [as_int(it["index"]) for it in items]
        if indices != list(range(n)):
            raise bad_response(endpoint, f"vector indices are not 0..{n - 1}: {indices[:10]}")
        if fast is None:
            rows = [it["embedding"] for it in items]
            if not all(isinstance(r, list) for r in rows):
                raise bad_response(endpoint, "an embedding is not a list of numbers")
            dims = {len(r) for r in rows}
            if len(dims) > 1 or 0 in dims:
                raise bad_response(endpoint, f"vectors of different or zero dimensions: {sorted(dims)}")
        tokens = [as_int((it.get("usage") or {}).get("prompt_tokens") or 0) for it in items]
    if fast is not None:
        return EmbeddingsResult(vectors=fast[1][order], tokens=tokens, model=model)
    try:
        vectors = np.array(rows, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise bad_response(endpoint, f"an embedding holds a non-number: {e}") from None
    if n and not np.isfinite(vectors).all():
        raise bad_response(endpoint, "an embedding holds null, NaN or infinite values")
    return EmbeddingsResult(vectors=vectors.reshape(n, -1) if n else vectors, tokens=tokens, model=model)
