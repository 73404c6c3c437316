"""Decode an embeddings response's vectors without one Python float per number, mostly outside the GIL.

The arrays are cut out of the body by position and parsed by pyarrow; orjson reads the small rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["LARGE_BODY_BYTES", "decode_embeddings"]

LARGE_BODY_BYTES = 256 * 1024  # bigger bodies are decoded in a worker thread, off the event loop (~1.5 ms and up)

_KEY = b'"embedding"'
_WS = frozenset((b" ", b"\t", b"\n", b"\r"))
_MINUS, _ZERO, _DOT = ord("-"), ord("0"), ord(".")


def decode_embeddings(body: bytes) -> tuple[dict[str, Any], np.ndarray] | None:
    """(the body parsed with each item's "embedding" as [], the vectors as float32 rows in document order).

    The rows are bit for bit what orjson or json and then np.array(rows, np.float32) give. None when the body
    is not the usual shape or anything in it is off (a non-number, null, NaN, ragged rows, invalid JSON): the
    caller's full parse then decides, with its own error messages.
    """
    spans = _vector_spans(body)
    if not spans:
        return None
    cuts = [0, *(i for span in spans for i in span), len(body)]
    view = memoryview(body)
    try:  # the body with each array emptied: small, so orjson reads it fast
        doc = orjson.loads(b"".join([view[cuts[i]:cuts[i + 1]] for i in range(0, len(cuts), 2)]))
    except orjson.JSONDecodeError:
        return None
    items = doc.get("data") if isinstance(doc, dict) else None
    # Every item's [] must be one we emptied, one each: only then do rows and items pair up in order.
    if not isinstance(items, list) or len(items) != len(spans) or not all(
            isinstance(item, dict) and item.get("embedding") == [] for item in items):
        return None
    vectors = _parse_rows(body, spans)
    return None if vectors is None else (doc, vectors)


def _skip_ws(body: bytes, i: int) -> int:
    while body[i:i + 1] in _WS:
        i += 1
    return i


def _vector_spans(body: bytes) -> list[tuple[int, int]]:
    """(start, end) of the text inside each `"embedding": [...]`, in document order; [] if one is not an array."""
    spans: list[tuple[int, int]] = []
    at = body.find(_KEY)
    while at >= 0:
        i = _skip_ws(body, at + len(_KEY))
        if body[i:i + 1] == b":":  # else "embedding" is a value, as in "object": "embedding"
            i = _skip_ws(body, i + 1)
            end = body.find(b"]", i)
            if body[i:i + 1] != b"[" or end < 0:
                return []
            spans.append((i + 1, end))
            at = end
        at = body.find(_KEY, at + 1)
    return spans


def _parse_rows(body: bytes, spans: list[tuple[int, int]]) -> np.ndarray | None:
    # Imported here: pyarrow (80 ms) then loads with the first response, not before the token request.
    import pyarrow as pa
    import pyarrow.compute as pc

    view = memoryview(body)
    text = b"".join([view[s:e] for s, e in spans])
    if len(text) >= 2**31:  # int32 offsets
        return None
    offsets = np.zeros(len(spans) + 1, dtype=np.int32)
    np.cumsum([e - s for s, e in spans], out=offsets[1:])
    rows = pa.StringArray.from_buffers(len(spans), pa.py_buffer(offsets), pa.py_buffer(text))
    lists = pc.split_pattern(rows, ",")
    dims = np.diff(lists.offsets.to_numpy())
    if (dims != dims[0]).any():  # an empty array splits into one "" that the cast refuses
        return None
    tokens = lists.flatten()
    if any(ws in text for ws in (b" ", b"\n", b"\t", b"\r")):  # pretty-printed: the cast takes no spaces
        tokens = pc.ascii_trim_whitespace(tokens)
    try:
        # Through float64 as orjson and json read numbers: a direct float32 parse rounds once, which
        # differs from their double rounding in rare cases.
        values = tokens.cast(pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        return None
    negative_zero = _json_spelling(tokens, text)
    if negative_zero is None:
        return None
    with np.errstate(over="ignore"):  # beyond float32's range: inf, refused just below
        vectors = values.astype(np.float32)
    vectors[negative_zero] = 0.0  # orjson and json read "-0" as the integer 0, whose float is +0.0
    if not np.isfinite(vectors).all():
        return None
    return vectors.reshape(len(spans), int(dims[0]))


def _json_spelling(tokens: pa.StringArray, text: bytes) -> np.ndarray | None:
    """Where the tokens are the integer "-0", or None if a token is a number JSON does not allow.

    Arrow also takes "+1", ".5", "5.", "1.e5", "01", "nan" and "inf"; orjson and json refuse them all
    (json takes NaN and Infinity, which the caller's full parse then refuses as non-finite).
    """
    _, offsets_buffer, data_buffer = tokens.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[tokens.offset:tokens.offset + len(tokens) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    zero = np.uint8(_ZERO)  # uint8 arithmetic: a byte below "0" wraps round to above "9"
    # np.take rather than data[index]: twice as fast on these ascending indices.
    negative = np.take(data, starts) == _MINUS
    first = starts + negative  # the first digit: the cast refuses a lone "-"
    lead = np.take(data, first) - zero
    if (lead > 9).any() or (np.take(data, ends - 1) - zero > 9).any():
        return None
    more = first + 1 < ends
    if ((lead == 0) & more & (np.take(data, first + 1, mode="clip") - zero <= 9)).any():  # a leading zero
        return None
    if _dot_before_exponent(text):
        return None
    return negative & (lead == 0) & ~more


def _dot_before_exponent(text: bytes) -> bool:
    """True if "1.e5" or "1.E5" occurs; bytes.find is memchr-fast while exponents are rare, as in most vectors."""
    for letter in b"eE":
        at = text.find(letter)
        for _ in range(64):
            if at < 0:
                break
            if at > 0 and text[at - 1] == _DOT:
                return True
            at = text.find(letter, at + 1)
        else:  # exponents everywhere: look at all of them at once
            u8 = np.frombuffer(text, dtype=np.uint8)
            if (u8[:-1][u8[1:] == letter] == _DOT).any():
                return True
    return False
