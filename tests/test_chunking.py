"""Tests for pipeline.chunking: the limit always holds, spans tile the source, boundaries are natural."""

from __future__ import annotations

import hashlib
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.chunking import ChunkSettings, Span, chunk_document, chunk_stream, chunk_text, split_for_retry
from pipeline.config import ChunkingConfig
from pipeline.errors import ConfigError
from pipeline.records import Document, ModelSpec
from pipeline.tokens import CachedCounter, ProxyCounter, TokenCounter, token_counter_for

PROXY = ProxyCounter()


def _spec(limit: int = 512, tokenizer: str = "proxy") -> ModelSpec:
    return ModelSpec(name="m", provider="gigachat", kind="embed", max_input_tokens=limit, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def e5() -> TokenCounter:
    return token_counter_for(_spec(tokenizer="e5"))


class CharCounter:
    """A counter with no cap and no overhead attribute: 1 token per character + 2."""

    name = "chars"

    def count(self, text: str) -> int:
        return len(text) + 2


class WobblyCounter:
    """A counter whose count is not additive at all: pieces must be checked whole, never summed."""

    name = "wobbly"

    def count(self, text: str) -> int:
        return len(text) // 2 + 3 + (len(text) % 7 == 0) * 5 + text.count("\n") * 3


EN = (
    "# Getting started\n\nThe pipeline reads a corpus, splits each document into chunks, and embeds them. "
    "Dr. Smith wrote the first version in 2019, e.g. for search. It worked! Did it scale? Not really.\n\n"
    "## Chunking\n\nEvery chunk fits the model's limit. Chunks keep their offsets, so a citation can point "
    "back to the source text.\nA second line of the same paragraph.\n"
)
RU = (
    "# Введение\n\nКонвейер читает корпус, делит документы на фрагменты и вычисляет эмбеддинги. "
    "Проф. Иванов А. С. написал первую версию в 2019 г. для поиска. Работало! Масштабировалось? Нет.\n\n"
    "## Фрагменты\n\nКаждый фрагмент укладывается в лимит модели, т.е. не длиннее 512 токенов. "
    "Смещения сохраняются, чтобы цитата указывала на исходный текст.\n"
)


def check(text: str, spans: list[Span], counter: TokenCounter, s: ChunkSettings, *, monotone: bool = True) -> None:
    """The invariants every chunking must keep."""
    pos = 0
    for i, span in enumerate(spans):
        piece = text[span.start : span.end]
        assert counter.count(piece) <= s.max_tokens, (i, piece)
        assert span.token_count == counter.count(piece)
        assert span.start + span.overlap_chars == pos, "bodies must tile the text"
        assert span.end > pos, "every body is non-empty"
        if i == 0:
            assert span.overlap_chars == 0
        else:
            assert span.start >= spans[i - 1].start + spans[i - 1].overlap_chars
        if monotone and piece[span.overlap_chars :].isspace():
            # a whitespace-only body only where joining it to either neighbour would break the limit
            body = span.start + span.overlap_chars
            if i > 0:
                assert counter.count(text[spans[i - 1].start : span.end]) > s.max_tokens, (i, piece)
            if i + 1 < len(spans):
                assert counter.count(text[body : spans[i + 1].end]) > s.max_tokens, (i, piece)
        pos = span.end
    if text.strip():
        assert pos == len(text)
    else:
        assert spans == []


def run(text: str, counter: TokenCounter, max_tokens: int, target: int = 0, overlap: int = 0) -> list[Span]:
    s = ChunkSettings(max_tokens=max_tokens, target_tokens=target or max_tokens, overlap_tokens=overlap)
    spans = list(chunk_text(text, s, counter))
    check(text, spans, counter, s)
    return spans


# --- settings ---------------------------------------------------------------------------------------


def test_settings_for_model_defaults_to_the_limit() -> None:
    s = ChunkSettings.for_model(_spec(4096), ChunkingConfig())
    assert (s.max_tokens, s.target_tokens, s.overlap_tokens) == (4096, 4096, 0)


def test_settings_for_model_takes_target_and_overlap() -> None:
    s = ChunkSettings.for_model(_spec(512), ChunkingConfig(target_tokens=400, overlap_tokens=50))
    assert (s.max_tokens, s.target_tokens, s.overlap_tokens) == (512, 400, 50)


@pytest.mark.parametrize(
    ("target", "overlap", "message"),
    [(600, 0, "exceeds"), (400, 200, "half"), (400, 250, "half"), (0, 256, "half")],
)
def test_settings_for_model_refuses_bad_sizes(target: int, overlap: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ChunkSettings.for_model(_spec(512), ChunkingConfig(target_tokens=target, overlap_tokens=overlap))


def test_settings_refuse_nonsense_directly() -> None:
    with pytest.raises(ConfigError):
        ChunkSettings(max_tokens=0, target_tokens=0)
    with pytest.raises(ConfigError):
        ChunkSettings(max_tokens=10, target_tokens=20)


# --- basic behaviour --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\n\n\t \r\n", " " * 10_000, "\u3000\u00a0\u2029"])
def test_blank_text_yields_no_chunks(text: str) -> None:
    assert run(text, PROXY, 16) == []


def test_short_text_is_one_chunk_with_its_whitespace() -> None:
    spans = run("  hello world \n\n", PROXY, 512)
    assert spans == [Span(0, 16, PROXY.count("  hello world \n\n"), 0)]


@pytest.mark.parametrize("limit", [16, 32, 64, 512])
@pytest.mark.parametrize("text", [EN, RU, EN * 20 + RU * 20])
def test_prose_within_limit_and_tiled(text: str, limit: int) -> None:
    run(text, PROXY, limit)


@pytest.mark.parametrize("limit", [24, 64])
def test_prose_with_e5(e5: TokenCounter, limit: int) -> None:
    run(EN * 3 + RU * 3, e5, limit)


def test_counter_without_a_cap() -> None:
    run(EN * 5, CharCounter(), 40)


def test_chunks_through_a_cached_exact_counter() -> None:
    remote_calls = []

    def remote(texts: list[str]) -> list[int]:
        remote_calls.append(len(texts))
        return [PROXY.cl100k_count(t) for t in texts]

    counter = CachedCounter("exact", remote, overhead_tokens=5)
    spans = run(EN * 10 + RU * 10, counter, 128)
    assert len(remote_calls) < 3 * len(spans)  # about one request per chunk, not a search per chunk


def test_non_additive_counter_still_within_limit() -> None:
    run(EN * 5 + RU * 5, WobblyCounter(), 30, overlap=5)


def _bodies(text: str, spans: list[Span]) -> list[str]:
    return [text[s.start + s.overlap_chars : s.end] for s in spans]


def test_cuts_prefer_paragraphs_then_sentences() -> None:
    text = EN * 10
    spans = run(text, PROXY, 64)
    bodies = _bodies(text, spans)
    for body in bodies[:-1]:
        end = body.rstrip(" ")
        # a cut lands after a paragraph, a line or a sentence, never inside a word or after an abbreviation
        assert end.endswith(("\n", ".", "!", "?")), body
        assert not end.endswith(("Dr.", "e.g.")), body


def test_russian_sentences_and_abbreviations() -> None:
    text = RU * 10
    bodies = _bodies(text, run(text, PROXY, 96))
    for body in bodies[:-1]:
        end = body.rstrip(" ")
        assert end.endswith(("\n", ".", "!", "?")), body
        assert not re.search(r"(Проф|А|С|г|т\.е)\.$", end), body


def test_headings_start_chunks() -> None:
    text = ("# Title\n" + "Words in a short line. " * 3 + "\n") * 30
    bodies = _bodies(text, run(text, PROXY, 64))
    assert sum(b.startswith("# Title") for b in bodies) >= len(bodies) - 1


def test_no_chunk_ends_on_its_heading() -> None:
    section = "## Section {}\n\n" + "A sentence of filler words for this section. " * 12 + "\n\n"
    text = "".join(section.format(i) for i in range(40))
    for body in _bodies(text, run(text, PROXY, 96))[:-1]:
        last_line = body.rstrip().rsplit("\n", 1)[-1]
        assert not last_line.startswith("#"), body


def test_target_below_limit_gives_smaller_chunks() -> None:
    text = EN * 20
    full = run(text, PROXY, 512)
    small = run(text, PROXY, 512, target=128)
    assert len(small) > 2 * len(full)
    assert max(s.token_count for s in small) <= 128 + 10


def test_chunks_fill_most_of_the_target() -> None:
    text = EN * 50
    spans = run(text, PROXY, 256)
    assert sum(s.token_count for s in spans[:-1]) / (len(spans) - 1) > 0.7 * 256


# --- overlap ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [1, 5, 15])
def test_overlap_repeats_the_previous_tail(overlap: int) -> None:
    text = EN * 10 + RU * 10
    spans = run(text, PROXY, 40, overlap=overlap)
    assert any(s.overlap_chars > 0 for s in spans[1:])
    for prev, span in zip(spans, spans[1:], strict=False):
        assert span.start >= prev.start + prev.overlap_chars
        assert span.start + span.overlap_chars == prev.end
        tail = text[span.start : span.start + span.overlap_chars]
        assert text[prev.start : prev.end].endswith(tail)
        assert PROXY.count(tail) <= overlap * 2 + 10  # about overlap tokens, never most of a chunk


def test_overlap_never_breaks_the_limit_at_the_edge() -> None:
    run(EN * 30, PROXY, 16, overlap=7)
    run("x" * 3000, PROXY, 16, overlap=7)


# --- odd input --------------------------------------------------------------------------------------


def test_nul_bytes() -> None:
    text = "\x00" * 500 + "abc\x00def " * 200
    run(text, PROXY, 32)


def test_nul_bytes_with_e5(e5: TokenCounter) -> None:
    run("a\x00" + "hello world " * 200, e5, 32)


def test_one_long_unbroken_word_is_split_inside() -> None:
    text = "A" * 200_000
    spans = run(text, PROXY, 512)
    assert len(spans) >= 200_000 // (3 * 507)
    assert max(s.end - s.start for s in spans) <= 3 * 507


def test_long_url_in_prose_only_the_url_is_split() -> None:
    url = "https://example.com/" + "Zm9vYmFy" * 2_000
    text = "See the link " + url + " for details. " + "More words here. " * 50
    bodies = _bodies(text, run(text, PROXY, 64))
    assert bodies[0] == "See the link "  # the word before the URL is not cut
    assert "".join(bodies) == text


def test_mixed_scripts_and_emoji() -> None:
    text = ("Hello мир 世界 🌍👨‍👩‍👧 مرحبا שלום नमस्ते e\u0301\u0302 " * 200)
    run(text, PROXY, 32)
    run(text, PROXY, 64, overlap=10)


def test_combining_marks_stay_with_their_base() -> None:
    text = "e" + "\u0301" * 3 + ("a\u0301" * 3000)
    for span in run(text, PROXY, 16):
        assert text[span.start + span.overlap_chars] != "\u0301" or span.start == 0


def test_giant_whitespace_run_between_words() -> None:
    text = "word " + " " * 5000 + "end"
    run(text, PROXY, 32)


def test_trailing_whitespace_joins_the_last_chunk() -> None:
    text = EN * 3 + "\n" * 40
    spans = run(text, PROXY, 64)
    assert not text[spans[-1].start : spans[-1].end].isspace()


def test_large_single_line_streams_in_bounded_memory() -> None:
    import tracemalloc

    text = " ".join(f"word{i % 977}" for i in range(150_000))  # ~1.3 MB, no newline anywhere
    spans = chunk_text(text, ChunkSettings(512, 512), PROXY)
    first = next(spans)  # lazy: the first chunk comes before the rest is planned
    assert first.start == 0
    tracemalloc.start()
    try:
        count = 1 + sum(1 for _ in spans)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count > len(text) // (3 * 512)
    assert peak < 256 * 1024  # a chunk or two at a time, never a copy of the text


def test_limit_too_small_for_one_character() -> None:
    with pytest.raises(ConfigError, match="one character"):
        list(chunk_text("abc", ChunkSettings(max_tokens=6, target_tokens=6), PROXY))


# --- chunk_document ---------------------------------------------------------------------------------


def test_chunk_document_fills_the_records() -> None:
    text = EN * 10
    doc = Document(doc_id="a.md", source_path="a.md", text=text, content_hash="x", doc_type="md",
                   metadata={"title": "A"})
    s = ChunkSettings(max_tokens=64, target_tokens=64, overlap_tokens=8)
    chunks = chunk_document(doc, s, PROXY)
    assert len(chunks) > 3
    for i, c in enumerate(chunks):
        assert c.chunk_id == f"a.md:{i}" and c.chunk_index == i
        assert c.doc_id == "a.md" and c.source_path == "a.md" and c.doc_type == "md"
        assert c.text == text[c.char_start : c.char_end]
        assert c.content_hash == hashlib.sha256(c.text.encode()).hexdigest()
        assert c.token_count == PROXY.count(c.text) <= 64
        assert c.metadata == {"title": "A"}
    assert "".join(c.text[c.overlap_chars :] for c in chunks) == text


def test_chunk_document_of_blank_document_is_empty() -> None:
    doc = Document(doc_id="e", source_path="e", text=" \n ", content_hash="x", doc_type="txt")
    assert chunk_document(doc, ChunkSettings(512, 512), PROXY) == []


# --- chunk_stream -----------------------------------------------------------------------------------


def _stream(text: str, piece: int, window: int, limit: int, overlap: int = 0,
            counter: TokenCounter = PROXY) -> list[Span]:
    s = ChunkSettings(max_tokens=limit, target_tokens=limit, overlap_tokens=overlap)
    pieces = [text[i : i + piece] for i in range(0, len(text), piece)]
    out = list(chunk_stream(pieces, s, counter, window_chars=window))
    for span, chunk in out:
        assert chunk == text[span.start : span.end]
    spans = [span for span, _ in out]
    check(text, spans, counter, s)
    return spans


@pytest.mark.parametrize(("piece", "window"), [(1, 200), (7, 300), (1000, 500), (10**6, 4096)])
def test_chunk_stream_keeps_every_invariant(piece: int, window: int) -> None:
    _stream((EN + RU) * 8 + "  \n", piece, window, 48, overlap=6)


def test_chunk_stream_matches_chunk_text_in_one_window() -> None:
    text = (EN + RU) * 4
    s = ChunkSettings(max_tokens=64, target_tokens=64, overlap_tokens=8)
    assert [sp for sp, _ in chunk_stream([text], s, PROXY)] == list(chunk_text(text, s, PROXY))


def test_chunk_stream_of_nothing_and_of_blanks() -> None:
    s = ChunkSettings(max_tokens=64, target_tokens=64)
    assert list(chunk_stream([], s, PROXY)) == []
    assert list(chunk_stream([" ", "\n" * 5000, "\t"], s, PROXY, window_chars=100)) == []


def test_chunk_stream_with_long_chunks_for_its_window() -> None:
    # chunks of up to ~1500 characters through a 256-character window: the window grows to hold them
    _stream("x" * 5000 + " y" * 2000, 100, 256, 512)


# --- split_for_retry --------------------------------------------------------------------------------


def _check_split(text: str, pieces: list[tuple[int, int]]) -> None:
    assert len(pieces) >= 2
    assert pieces[0][0] == 0 and pieces[-1][1] == len(text)
    for (_, a_end), (b_start, _) in zip(pieces, pieces[1:], strict=False):
        assert a_end == b_start
    assert all(0 < end - start < len(text) for start, end in pieces)


def test_split_for_retry_prefers_a_paragraph_near_the_middle() -> None:
    text = "First paragraph, one sentence. Two.\n\nSecond paragraph here. And more."
    pieces = split_for_retry(text, PROXY)
    _check_split(text, pieces)
    assert text[: pieces[0][1]].endswith("\n\n")


def test_split_for_retry_then_sentence_then_word() -> None:
    text = "One sentence here. Another one there."
    pieces = split_for_retry(text, PROXY)
    assert text[: pieces[0][1]] == "One sentence here. "
    text = "many plain words without any stop"
    cut = split_for_retry(text, PROXY)[0][1]
    assert text[cut - 1] == " "


def test_split_for_retry_inside_a_word_and_tiny_texts() -> None:
    _check_split("x" * 1000, split_for_retry("x" * 1000, PROXY))
    assert split_for_retry("ab", PROXY) == [(0, 1), (1, 2)]
    assert split_for_retry("a", PROXY) == [(0, 1)]
    assert split_for_retry("", PROXY) == []


def test_split_for_retry_balances_tokens_not_characters() -> None:
    text = "word " * 300 + "\n\n" + "😀" * 100 + "\n\n" + "слово " * 10
    a, b = split_for_retry(text, PROXY)
    assert abs(PROXY.count(text[slice(*a)]) - PROXY.count(text[slice(*b)])) < PROXY.count(text) / 2


# --- properties -------------------------------------------------------------------------------------

_ODD = st.sampled_from(["\x00", "😀", "👨‍👩‍👧", "\u0301", "\n", "\n\n", "# ", ". ", "! ", "т.е. ", "   ",
                        "\r\n", "\u00a0", "\u200b", "日本", "https://x.y/" + "a" * 40, "Ёё", "…", "\ufeff"])
TEXTS = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(st.text(max_size=12), _ODD, st.sampled_from(EN.split() + RU.split())),
             max_size=150).map(" ".join),
    st.lists(st.one_of(_ODD, st.text(alphabet="аб вг\n.", max_size=30)), max_size=60).map("".join),
)
# CHUNKING_EXAMPLES=2000 for a long hunt; the default keeps the suite fast
PROP = settings(max_examples=int(os.environ.get("CHUNKING_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(text=TEXTS, limit=st.sampled_from([16, 32, 64]), overlap=st.sampled_from([0, 0, 3, 7]))
def test_property_proxy_limit_tiling_offsets(text: str, limit: int, overlap: int) -> None:
    run(text, PROXY, limit, overlap=overlap)


@PROP
@given(text=TEXTS, limit=st.sampled_from([16, 32, 64]), overlap=st.sampled_from([0, 3]))
def test_property_e5_limit_tiling_offsets(e5: TokenCounter, text: str, limit: int, overlap: int) -> None:
    run(text, e5, limit, overlap=overlap)


@PROP
@given(text=TEXTS, limit=st.integers(min_value=4, max_value=40))
def test_property_wobbly_counter(text: str, limit: int) -> None:
    counter = WobblyCounter()
    s = ChunkSettings(max_tokens=limit + 10, target_tokens=limit + 10)
    try:
        spans = list(chunk_text(text, s, counter))
    except ConfigError:
        return  # a limit too small for one character is refused, never exceeded
    check(text, spans, counter, s, monotone=False)


@PROP
@given(text=TEXTS, piece=st.integers(min_value=1, max_value=50), window=st.integers(min_value=8, max_value=400))
def test_property_chunk_stream(text: str, piece: int, window: int) -> None:
    _stream(text, piece, window, 32, overlap=3)


@PROP
@given(text=st.text(min_size=2, max_size=300))
def test_property_split_for_retry(text: str) -> None:
    _check_split(text, split_for_retry(text, PROXY))
