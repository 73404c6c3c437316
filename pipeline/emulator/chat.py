"""Emulator chat: deterministic answers, function calls and image descriptions for /chat/completions.

Pure and sync: takes a decoded request body and the uploaded files, returns a Completion or raises ChatError.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

CHAT_MODELS = (
    "GigaChat",
    "GigaChat-2",
    "GigaChat-2-Lite",
    "GigaChat-2-Pro",
    "GigaChat-2-Max",
    "GigaChat-Pro",
    "GigaChat-Max",
)
VISION_MODELS = frozenset(
    {"GigaChat-2-Pro", "GigaChat-2-Max"}
)  # the only ones that take image attachments (§8)
MODEL_BUILD = "2.0.28.2"  # echoed as "<model>:<build>", as the real service does
MAX_ATTACHMENTS_PER_MESSAGE = 1
MAX_ATTACHMENTS_PER_REQUEST = 10
BLACKLIST_ANSWER = "Не люблю менять тему разговора, но вот сейчас тот самый случай."
_ROLES = frozenset({"system", "user", "assistant", "function", "search_result", "function_in_progress"})
_MESSAGE_OVERHEAD_TOKENS = 3  # per message, for its role and separators

_WORD = re.compile(r"\w+")
_SOURCE_LINE = re.compile(r"^\s*\[(\d+)\]\s*(.*?)\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_QUOTED = re.compile(r"[«\"“]([^»\"”]+)[»\"”]")
_INTEGER = re.compile(r"-?\d+")
_CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)
# Words too common to tell sources apart, in both languages the service speaks.
_STOPWORD_TEXT = """
the and for are was what which who how why when where does with from that this there about into your you
что как это для или где когда кто чем при про его она они был была были какой какая какие есть мне меня нам вам
так уже ещё еще
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
# Words that make "auto" call a function even when no description word matches (stems, so inflections count).
_CALL_TRIGGERS = ("search", "find", "lookup", "weather", "поиск", "найд", "найт", "поищ", "погод")
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame: they hold the size
_TEXT_KEYS = ("text", "content", "snippet", "body", "chunk", "passage", "answer", "title")


class ChatError(Exception):
    """A request the real service would refuse: HTTP status and the message of its error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class StoredFile:
    """One uploaded file, kept in memory."""

    id: str
    filename: str
    data: bytes
    purpose: str
    created_at: int
    content_type: str


@dataclass(frozen=True)
class Completion:
    """The assistant's turn: text or one function call, why it ended, and the token usage."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    function_call: dict[str, Any] | None = None
    functions_state_id: str | None = None


def count_tokens(text: str) -> int:
    """The emulator's /tokens/count rule: ceil(len(text) / 3), in line with "3-4 characters per token" (§10)."""
    return math.ceil(len(text) / 3)


def image_info(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) read from a PNG or JPEG header, or None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return "PNG", width, height
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length field
            i += 2
        elif marker in _JPEG_FRAME_MARKERS:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return "JPEG", width, height
        else:
            i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return "JPEG", 0, 0


def split_deltas(content: str, words_per_delta: int = 3) -> list[str]:
    """Cut an answer into stream deltas of a few words each; joined, they give back `content` exactly."""
    words = re.split(r"(?<=\s)(?=\S)", content)
    return ["".join(words[i : i + words_per_delta]) for i in range(0, len(words), words_per_delta)] or [""]


def complete(body: Mapping[str, Any], files: Mapping[str, StoredFile], blacklist_word: str) -> Completion:
    """Answer a chat request deterministically: the same body and files always give the same Completion.

    Raises:
        ChatError: 404 for an unknown model or file, 422 for parameters the real service rejects.
    """
    model = body.get("model")
    if model not in CHAT_MODELS:
        raise ChatError(404, "No such model")
    messages = _validated_messages(body.get("messages"))
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or temperature <= 0):
        raise ChatError(422, "Invalid params: temperature must be in range (0, +inf)")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ChatError(422, "Invalid params: max_tokens must be a positive integer")
    functions = _validated_functions(body.get("functions"))
    mode = _function_mode(body.get("function_call"), functions)
    attached = _attached_files(messages, files, str(model))

    users = [m for m in messages if m["role"] == "user"]
    last_user = users[-1] if users else {"content": ""}
    question_text = last_user.get("content") or ""
    prompt_tokens = sum(count_tokens(m.get("content") or "") + _MESSAGE_OVERHEAD_TOKENS for m in messages)
    prompt_tokens += sum(count_tokens(orjson.dumps(f).decode()) for f in functions)

    if blacklist_word and blacklist_word.lower() in question_text.lower():
        return _text(BLACKLIST_ANSWER, prompt_tokens, None, finish_reason="blacklist")
    last = messages[-1]
    if last["role"] == "function":
        return _text(_answer_function_result(last, messages, question_text), prompt_tokens, max_tokens)
    if functions and mode != "none":
        chosen = (
            _forced(mode, functions) if isinstance(mode, dict) else _pick_function(functions, question_text)
        )
        if chosen is not None:
            return _call(chosen, question_text, body, prompt_tokens)
    if last_user.get("attachments"):
        answer = _describe_images([attached[a] for a in last_user["attachments"]], _question(question_text))
        return _text(answer, prompt_tokens, max_tokens)
    context = "\n".join(m.get("content") or "" for m in messages if m["role"] in ("system", "user"))
    sources = _parse_sources(context)
    question = _question(question_text)
    answer = _answer_from_sources(sources, question) if sources else _echo(question)
    return _text(answer, prompt_tokens, max_tokens)


def _validated_messages(raw: object) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw or not all(isinstance(m, dict) for m in raw):
        raise ChatError(422, "Invalid params: messages must be a non-empty list of objects")
    for index, message in enumerate(raw):
        role = message.get("role")
        if role not in _ROLES:
            raise ChatError(422, f"Invalid params: unknown role {role!r} in message {index}")
        if not isinstance(message.get("content") or "", str):
            raise ChatError(422, f"Invalid params: content of message {index} must be a string")
        if role == "system" and index > 0:
            raise ChatError(422, "system message must be the first message")
        if role == "function":
            try:
                orjson.loads(message.get("content") or "")
            except orjson.JSONDecodeError:
                raise ChatError(
                    422, f"Invalid params: content of function message {index} must be JSON"
                ) from None
    return raw


def _validated_functions(raw: object) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(
        isinstance(f, dict) and isinstance(f.get("name"), str) for f in raw
    ):
        raise ChatError(422, "Invalid params: functions must be a list of objects with a name")
    return raw


def _function_mode(raw: object, functions: Sequence[Mapping[str, Any]]) -> str | dict[str, Any]:
    if raw is None:
        return "auto"
    if raw in ("auto", "none"):
        return str(raw)
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        if raw["name"] not in {f["name"] for f in functions}:
            raise ChatError(
                422, f"Invalid params: function_call names {raw['name']!r}, which is not in functions"
            )
        return raw
    raise ChatError(422, 'Invalid params: function_call must be "auto", "none" or {"name": ...}')


def _attached_files(
    messages: Sequence[Mapping[str, Any]], files: Mapping[str, StoredFile], model: str
) -> dict[str, StoredFile]:
    attached: dict[str, StoredFile] = {}
    total = 0
    for index, message in enumerate(messages):
        ids = message.get("attachments") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ChatError(422, f"Invalid params: attachments of message {index} must be a list of file ids")
        if not ids:
            continue
        if model not in VISION_MODELS:
            raise ChatError(422, f"Model {model} does not support attachments")
        if len(ids) > MAX_ATTACHMENTS_PER_MESSAGE:
            raise ChatError(
                422, f"Invalid params: at most {MAX_ATTACHMENTS_PER_MESSAGE} attachment per message"
            )
        total += len(ids)
        if total > MAX_ATTACHMENTS_PER_REQUEST:
            raise ChatError(
                422, f"Invalid params: at most {MAX_ATTACHMENTS_PER_REQUEST} attachments per request"
            )
        for file_id in ids:
            if file_id not in files:
                raise ChatError(404, f"No such file: {file_id}")
            attached[file_id] = files[file_id]
    return attached


def _text(
    content: str, prompt_tokens: int, max_tokens: int | None, finish_reason: str = "stop"
) -> Completion:
    completion_tokens = count_tokens(content)
    if max_tokens is not None and completion_tokens > max_tokens:
        content, completion_tokens, finish_reason = content[: max_tokens * 3], max_tokens, "length"
    return Completion(content, finish_reason, prompt_tokens, completion_tokens)


def _russian(text: str) -> bool:
    return bool(_CYRILLIC.search(text))


def _stems(text: str) -> set[str]:
    """Crude stems (first five letters) of the content words, so that inflected Russian forms still match."""
    return {w[:5] for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOPWORDS}


def _parse_sources(text: str) -> dict[int, str]:
    """Numbered sources: each line that starts with "[n]" is source n (the first one wins for a repeated n)."""
    sources: dict[int, str] = {}
    for line in text.splitlines():
        match = _SOURCE_LINE.match(line)
        if match and match[2]:
            sources.setdefault(int(match[1]), match[2])
    return sources


def _question(text: str) -> str:
    """The user's question: their last message without its source lines."""
    rest = "\n".join(line for line in text.splitlines() if not _SOURCE_LINE.match(line)).strip()
    return rest or text.strip()


def _lead(text: str) -> str:
    """The first sentence of a source, or the first two when the first is very short."""
    sentences = _SENTENCE_END.split(text.strip())
    lead = sentences[0]
    if len(lead) < 40 and len(sentences) > 1:
        lead = f"{lead} {sentences[1]}"
    return lead


def _cite(sentence: str, number: int) -> str:
    """Put "[n]" before the closing punctuation: "Paris is the capital [1]."."""
    body = sentence.rstrip()
    end = body[-1] if body and body[-1] in ".!?" else "."
    return f"{body.rstrip('.!?…')} [{number}]{end}"


def _answer_from_sources(sources: Mapping[int, str], question: str) -> str:
    """Answer with the lead of the one or two sources sharing the most words with the question, cited."""
    wanted = _stems(question)
    scored = sorted(
        ((len(wanted & _stems(text)), n) for n, text in sources.items()), key=lambda s: (-s[0], s[1])
    )
    chosen = [n for score, n in scored[:2] if score > 0]
    if not chosen:
        if _russian(question):
            return "В предоставленных источниках нет ответа на этот вопрос."
        return "The provided sources do not answer this question."
    return " ".join(_cite(_lead(sources[n]), n) for n in chosen)


def _echo(question: str) -> str:
    words = question.split()
    quote = " ".join(words[:12]) + (" …" if len(words) > 12 else "")
    if not quote:
        return "Здравствуйте! Чем могу помочь?"
    if _russian(question):
        return f"Вы спросили: «{quote}». Это ответ эмулятора GigaChat."
    return f'You asked: "{quote}". This is an answer from the GigaChat emulator.'


def _describe_images(images: Sequence[StoredFile], question: str) -> str:
    russian = _russian(question)
    parts = []
    for image in images:
        kind, width, height = image_info(image.data) or ("file", 0, 0)
        if russian:
            parts.append(
                f"На изображении «{image.filename}»: {kind} {width}×{height}, {len(image.data)} байт."
            )
        else:
            parts.append(
                f'The image "{image.filename}" is a {kind} of {width}×{height} pixels, {len(image.data)} bytes.'
            )
    return " ".join(parts + [_echo(question)])


def _forced(mode: Mapping[str, Any], functions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return next(f for f in functions if f["name"] == mode["name"])


def _pick_function(functions: Sequence[dict[str, Any]], question: str) -> dict[str, Any] | None:
    """The function that "auto" calls: named in the question, or sharing its words, or any for a trigger word."""
    lowered = question.lower()
    wanted = _stems(question)
    best, best_score = None, 0
    for function in functions:
        name = function["name"]
        score = 10 if name.lower() in lowered or name.replace("_", " ").lower() in lowered else 0
        score += len(wanted & _stems(f"{function.get('description') or ''} {name.replace('_', ' ')}"))
        if score > best_score:
            best, best_score = function, score
    if best is None and any(w.startswith(_CALL_TRIGGERS) for w in _WORD.findall(lowered)):
        best = functions[0]
    return best


def _call(
    function: Mapping[str, Any], question: str, body: Mapping[str, Any], prompt_tokens: int
) -> Completion:
    arguments = _arguments(function.get("parameters") or {}, _question(question))
    call = {"name": function["name"], "arguments": arguments}
    digest = hashlib.blake2b(orjson.dumps(body.get("messages"), option=orjson.OPT_SORT_KEYS), digest_size=16)
    state_id = str(uuid.UUID(bytes=digest.digest(), version=4))
    return Completion(
        "", "function_call", prompt_tokens, count_tokens(orjson.dumps(call).decode()), call, state_id
    )


def _arguments(schema: Mapping[str, Any], question: str) -> dict[str, Any]:
    """Fill every required and every string property of an object schema from the question."""
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    return {
        name: _value(spec, question, name)
        for name, spec in properties.items()
        if isinstance(spec, dict) and (name in required or spec.get("type", "string") == "string")
    }


def _value(spec: Mapping[str, Any], question: str, name: str) -> object:
    if spec.get("enum"):
        return spec["enum"][0]
    kind = spec.get("type", "string")
    if kind in ("integer", "number"):
        found = _INTEGER.search(question)
        number = int(found[0]) if found else 1 + hashlib.blake2b(name.encode()).digest()[0] % 9
        return number if kind == "integer" else float(number)
    if kind == "boolean":
        return True
    if kind == "array":
        items = spec["items"] if isinstance(spec.get("items"), dict) else {"type": "string"}
        return [_value(items, question, name) for _ in range(int(spec.get("minItems") or 0))]
    if kind == "object":
        return _arguments(spec, question)
    quoted = _QUOTED.search(question)
    return quoted[1] if quoted else question


def _answer_function_result(
    result: Mapping[str, Any], messages: Sequence[Mapping[str, Any]], question: str
) -> str:
    """Answer from a function's result: cite it if it holds sources, otherwise quote it."""
    name = result.get("name") or next(
        (
            m["function_call"].get("name")
            for m in reversed(messages)
            if isinstance(m.get("function_call"), dict)
        ),
        "function",
    )
    payload = orjson.loads(result.get("content") or "null")
    sources = _sources_in(payload)
    if sources:
        return _answer_from_sources(sources, _question(question))
    quote = orjson.dumps(payload).decode()
    quote = quote if len(quote) <= 300 else quote[:300] + "…"
    if _russian(question):
        return f"Результат функции {name}: {quote}"
    return f"The function {name} returned: {quote}"


def _sources_in(payload: object) -> dict[int, str]:
    """Sources inside a function result: "[n]" lines in a string, or the texts of the first list found."""
    if isinstance(payload, str):
        return _parse_sources(payload)
    if isinstance(payload, dict):
        texts = [v for v in payload.values() if isinstance(v, str)]
        lists = [v for v in payload.values() if isinstance(v, list)]
        numbered = _parse_sources("\n".join(texts))
        return numbered or (_sources_in(lists[0]) if lists else {})
    if isinstance(payload, list):
        found = [_item_text(item) for item in payload]
        return {i: text for i, text in enumerate(found, start=1) if text}
    return {}


def _item_text(item: object) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return next((item[k] for k in _TEXT_KEYS if isinstance(item.get(k), str) and item[k]), "")
    return ""
