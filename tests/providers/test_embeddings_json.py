"""The fast embeddings decode: bit for bit the full parse's vectors, and the full parse's errors whenever it declines.

"Full parse" is orjson (GigaChat) or json (OpenAI-compatible) and then np.array(rows, np.float32), as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal, localcontext
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.emulator.vectors import embed_texts
from pipeline.errors import BadResponseError
from pipeline.providers.embeddings_json import decode_embeddings
from pipeline.providers.gigachat import _wire
from pipeline.providers.openai_compat import _wire as openai_compat

TEXTS = [f"passage {i}: сервер бумага {i * 7} the quick brown fox" for i in range(100)]


def _body(vectors: Any, indices: list[int] | None = None, *, model: str = "EmbeddingsGigaR") -> bytes:
    """A response as the emulator sends it: numpy rows written by orjson in shortest float32 repr."""
    indices = list(range(len(vectors))) if indices is None else indices
    return orjson.dumps({"object": "list", "data": [
        {"object": "embedding", "embedding": vectors[i], "index": i, "usage": {"prompt_tokens": 7 + i}}
        for i in indices], "model": model}, option=orjson.OPT_SERIALIZE_NUMPY)


def _reference(body: bytes, loads: Callable[[bytes], Any] = orjson.loads) -> np.ndarray:
    """The vectors as the code before the fast path computed them."""
    items = sorted(loads(body)["data"], key=lambda it: int(it["index"]))
    with np.errstate(over="ignore"):
        return np.array([it["embedding"] for it in items], dtype=np.float32)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(a.view(np.uint32),
                                                                                      b.view(np.uint32))


def _no_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wire, "decode_embeddings", lambda body: None)
    monkeypatch.setattr(openai_compat, "decode_embeddings", lambda body: None)


@pytest.fixture
def full_parse_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    _no_fast_path(monkeypatch)
    yield


def _both_ways(monkeypatch: pytest.MonkeyPatch, parse: Callable[[], Any]) -> tuple[Any, Any]:
    """parse() with the fast path, then with the full parse only: each a result or the exception it raised."""
    out = []
    for fast in (True, False):
        with monkeypatch.context() as m:
            if not fast:
                _no_fast_path(m)
            try:
                out.append(parse())
            except BadResponseError as e:
                out.append(e)
    return out[0], out[1]


# ---------------------------------------------------------------- the fast path's answers


@pytest.mark.parametrize("model", ["Embeddings", "EmbeddingsGigaR"])
def test_emulator_vectors_come_back_bit_for_bit(model: str) -> None:
    vectors = embed_texts(model, TEXTS)
    body = _body(vectors, model=model)
    fast = decode_embeddings(body)
    assert fast is not None
    assert _same(fast[1], vectors) and _same(fast[1], _reference(body))
    assert fast[0]["model"] == model and fast[0]["data"][3] == {
        "object": "embedding", "embedding": [], "index": 3, "usage": {"prompt_tokens": 10}}
    result = _wire.parse_embeddings(body, len(TEXTS))
    assert _same(result.vectors, vectors)
    assert result.tokens == [7 + i for i in range(len(TEXTS))] and result.model == model
    assert _same(openai_compat.parse_embeddings(body, len(TEXTS), vectors.shape[1]), vectors)


def test_rows_are_put_in_index_order() -> None:
    vectors = embed_texts("Embeddings", TEXTS[:20])
    shuffled = list(np.random.default_rng(7).permutation(20))
    body = _body(vectors, shuffled)
    fast = decode_embeddings(body)
    assert fast is not None and _same(fast[1], vectors[shuffled])  # document order
    result = _wire.parse_embeddings(body, 20)
    assert _same(result.vectors, vectors) and result.tokens == [7 + i for i in range(20)]
    assert _same(openai_compat.parse_embeddings(body, 20, 1024), vectors)


def _spaced(obj: Any) -> bytes:
    """JSON with spaces, tabs and CRLFs everywhere whitespace may go, arrays included."""
    return json.dumps(obj, separators=(" ,\t\r\n  ", " :\n ")).encode()


@pytest.mark.parametrize("dump", [
    lambda obj: orjson.dumps(obj, option=orjson.OPT_INDENT_2),
    lambda obj: json.dumps(obj, indent=1).encode(),  # Python floats: 17 digits, read through float64
    lambda obj: json.dumps(obj).encode(),  # ", " between numbers
    _spaced,
])
def test_pretty_printed_bodies_take_the_fast_path(dump: Callable[[Any], bytes]) -> None:
    vectors = embed_texts("EmbeddingsGigaR", TEXTS[:10])
    body = dump(orjson.loads(_body(vectors)))
    fast = decode_embeddings(body)
    assert fast is not None and _same(fast[1], vectors) and _same(fast[1], _reference(body))
    assert _same(_wire.parse_embeddings(body, 10).vectors, vectors)


NUMBERS = ["1e-05", "-0.0", "3", "1E+2", "1e+2", "1E2", "1e05", "-1.5E-3", "0", "-0", "-0e0", "0.0", "-0.5",
           "16777217", "9007199254740993", str(2**60 + 2**36 + 1), "123456789012345678901234567890", "3.4028235e38", "-3.4028234e38",
           "1.4e-45", "7e-46", "1e-400", "-1e-400", "0.1000000014901161193847656250000001", "0.30000001192092896",
           "2.5000001", "1.00000005960464477539062", "1.0000000596046448", "10", "-10", "100.25", "0e0", "0E-0"]


def test_number_spellings_match_the_full_parse() -> None:
    body = b'{"data":[{"embedding":[' + ",".join(NUMBERS).encode() + b'],"index":0}]}'
    fast = decode_embeddings(body)
    assert fast is not None
    assert _same(fast[1], _reference(body)) and _same(fast[1], _reference(body, json.loads))
    assert np.signbit(fast[1][0, NUMBERS.index("-0")]) == 0  # the integer -0 is +0.0 to orjson and json
    assert np.signbit(fast[1][0, NUMBERS.index("-0.0")]) == 1


def test_random_numbers_match_the_full_parse() -> None:
    rng = np.random.default_rng(2560)
    doubles = rng.standard_normal(20_000) * 10.0 ** rng.integers(-40, 38, 20_000)
    float32s = doubles.astype(np.float32)
    digits = [f"{'-' if rng.random() < 0.5 else ''}{rng.integers(1, 10)}.{rng.integers(0, 10**12):012d}"
              f"{rng.integers(0, 10**9)}e{rng.integers(-45, 39)}" for _ in range(5000)]
    for row in (json.dumps(doubles.tolist()), orjson.dumps(float32s, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
                json.dumps(float32s.tolist()), "[" + ",".join(digits) + "]"):
        body = b'{"data":[{"embedding":' + row.encode() + b',"index":0}]}'
        expected = _reference(body)
        fast = decode_embeddings(body)
        if np.isfinite(expected).all():
            assert fast is not None and _same(fast[1], expected)
        else:  # a double beyond float32's range: the full parse refuses it
            assert fast is None


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789.-+eE", min_size=1, max_size=7) | st.sampled_from(
    ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "infinity", "null", "true", '"1"', "[1]", "{}", ""]))
def test_any_token_is_read_as_orjson_reads_it_or_left_to_it(token: str) -> None:
    body = b'{"data":[{"embedding":[0.25,' + token.encode() + b'],"index":0}]}'
    fast = decode_embeddings(body)
    try:
        value = orjson.loads(body)["data"][0]["embedding"][1]
    except orjson.JSONDecodeError:
        value = None
    if type(value) not in (int, float) or not np.isfinite(_reference(body)).all():  # true reads as 1.0: not ours
        assert fast is None
    else:
        assert fast is not None and _same(fast[1], _reference(body))


@pytest.mark.parametrize("body", [
    # "embedding" last, spaces around the colon, an item with extra fields
    b'{"data":[{"index":0,"usage":{"prompt_tokens":3},"object":"embedding","embedding" :  [ 1.5 ,2 ]}],'
    b'"model":"m"}',
    # the key's text inside a string, escaped as JSON must
    b'{"model":"x\\"embedding\\":[9,9]","data":[{"embedding":[1.5,2],"index":0}]}',
    # a second array under the same name elsewhere: the fast path declines, the full parse answers
    b'{"data":[{"embedding":[1.5,2],"index":0,"usage":{"prompt_tokens":3,"embedding":[7]}}]}',
    b'{"data":[{"x\\"embedding":[7],"embedding":[1.5,2],"index":0}]}',
    b'{"extra":{"embedding":[7]},"data":[{"embedding":[1.5,2],"index":0}]}',
    b'{"data":[{"embedding":[1.5,2],"index":0}]}  \n',
])
def test_unusual_valid_bodies_give_the_full_parse_answer(body: bytes) -> None:
    assert _same(_wire.parse_embeddings(body, 1).vectors, np.array([[1.5, 2.0]], dtype=np.float32))
    assert _same(openai_compat.parse_embeddings(body, 1, 2), np.array([[1.5, 2.0]], dtype=np.float32))


# ---------------------------------------------------------------- declining, and the full parse's errors


def _items(*rows: bytes, indices: list[bytes] | None = None) -> bytes:
    indices = indices or [str(i).encode() for i in range(len(rows))]
    return (b'{"object":"list","model":"m","data":['
            + b",".join(b'{"object":"embedding","embedding":' + row + b',"index":' + index
                        + b',"usage":{"prompt_tokens":5}}' for row, index in zip(rows, indices, strict=True))
            + b"]}")


_GOOD = _body(embed_texts("Embeddings", TEXTS[:2]), model="Embeddings")

MALFORMED = [  # (body, n, the full parse's words for it in _wire or None, whether the fast path reads it)
    (_items(b"[0.5,null]", b"[1,2]"), 2, "null, NaN", False),
    (_items(b"[0.5,NaN]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[0.5,Infinity]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[0.5,-Infinity]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[0.5,1e400]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[0.5,1e39]", b"[1,2]"), 2, "null, NaN or infinite", False),
    # np.array reads "0.1" and true as numbers, so the full parse always took them: it still does
    (_items(b'[0.5,"0.1"]', b"[1,2]"), 2, None, False),
    (_items(b"[0.5,true]", b"[1,2]"), 2, None, False),
    (_items(b'[0.5,"x"]', b"[1,2]"), 2, "non-number", False),
    (_items(b"[[0.5,1],[2,3]]", b"[1,2]"), 2, "non-number", False),
    (_items(b"[0.5,1,2]", b"[1,2]"), 2, "different or zero dimensions", False),
    (_items(b"[]", b"[]"), 2, "different or zero dimensions", False),
    (_items(b"null", b"[1,2]"), 2, "not a list", False),
    (_items(b'{"a":1}', b"[1,2]"), 2, "not a list", False),
    (_items(b"[+1,2]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[.5,2]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[5.,2]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[01,2]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[-01,2]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[1.e5,2]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[1,,2]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[1,2,]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[1 2]", b"[1,2]"), 2, "invalid or truncated JSON", False),
    (_items(b"[1,2]", b"[1,2]", indices=[b"0", b"0"]), 2, "indices are not 0..1", True),
    (_items(b"[1,2]", b"[1,2]", indices=[b"0", b'"x"']), 2, "unexpected response shape", True),
    (_items(b"[1,2]", b"[1,2]"), 3, "2 vectors for 3 texts", True),
    (_items(b"[1,2]", b"[1,2]"), 1, "2 vectors for 1 texts", True),
    (_items(b"[1,2]", b"[1,2]").replace(b',"index":1', b""), 2, "unexpected response shape", True),
    (_items(b"[1,2]", b"[1,2]").replace(b'"prompt_tokens":5', b'"prompt_tokens":[5]', 1), 2,
     "unexpected response shape", True),
    (_GOOD[:len(_GOOD) // 2], 2, "invalid or truncated JSON", False),
    (_GOOD[:_GOOD.index(b"]") + 1], 2, "invalid or truncated JSON", False),
    (_GOOD[:-1], 2, "invalid or truncated JSON", False),
    (_GOOD.replace(b'"data":[', b'"data":{"x":[', 1).replace(b'],"model"', b']},"model"', 1), 2,
     "unexpected response shape", False),
]


@pytest.mark.parametrize(("body", "n", "words", "readable"), MALFORMED)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 1e39, in the full parse
def test_malformed_bodies_get_the_full_parse_error(monkeypatch: pytest.MonkeyPatch, body: bytes, n: int,
                                                  words: str | None, readable: bool) -> None:
    assert (decode_embeddings(body) is not None) == readable
    fast, full = _both_ways(monkeypatch, lambda: _wire.parse_embeddings(body, n))
    assert _alike(fast, full)
    assert isinstance(fast, BadResponseError) == (words is not None) and (words or "") in str(fast)
    assert _alike(*_both_ways(monkeypatch, lambda: openai_compat.parse_embeddings(body, n, 2)))


def _alike(a: Any, b: Any) -> bool:
    """The same exception message, or the same vectors."""
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    return _same(*(x.vectors if isinstance(x, _wire.EmbeddingsResult) else x for x in (a, b)))


@pytest.mark.usefixtures("full_parse_only")
def test_the_full_parse_alone_still_reads_good_bodies() -> None:
    vectors = embed_texts("Embeddings", TEXTS[:5])
    assert _same(_wire.parse_embeddings(_body(vectors), 5).vectors, vectors)
    assert _same(openai_compat.parse_embeddings(_body(vectors), 5, 1024), vectors)


def test_decimals_a_hair_off_a_float32_midpoint_round_as_the_full_parse_does() -> None:
    """orjson reads a float64, which lands on the midpoint and rounds to even: a direct float32 parse would not."""
    rng = np.random.default_rng(32)
    low = rng.standard_normal(2000).astype(np.float32)
    mids = (low.astype(np.float64) + np.nextafter(low, np.float32(np.inf)).astype(np.float64)) / 2
    with localcontext() as ctx:
        ctx.prec = 80
        tokens = [f"{Decimal(m) * (1 + Decimal(sign) * Decimal('1e-30')):f}"
                  for m, sign in zip(mids.tolist(), rng.choice([-1, 1], len(mids)).tolist(), strict=True)]
    body = b'{"data":[{"embedding":[' + ",".join(tokens).encode() + b'],"index":0}]}'
    fast = decode_embeddings(body)
    assert fast is not None and _same(fast[1], _reference(body))
