"""Tests for contextual chunks: the title and heading path embedded in front, within the limit, offsets kept."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.chunking import ChunkSettings, chunk_document
from pipeline.contextual import fit_prefix, prefix_reserve
from pipeline.records import Chunk, Document, ModelSpec
from pipeline.sources import SourceReport, html_document, iter_documents, markdown_headings, text_hash
from pipeline.tokens import ProxyCounter, TokenCounter, token_counter_for

PROXY = ProxyCounter()
ON = ChunkSettings(max_tokens=200, target_tokens=200, contextual=True)
OFF = ChunkSettings(max_tokens=200, target_tokens=200)


@pytest.fixture(scope="module")
def e5() -> TokenCounter:
    spec = ModelSpec(name="m", provider="local", kind="embed", max_input_tokens=512, tokenizer="e5")
    return token_counter_for(spec)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def md_doc(text: str, doc_id: str = "guide.md", **metadata: object) -> Document:
    return Document(doc_id=doc_id, source_path=doc_id, text=text, content_hash=text_hash(text), doc_type="md",
                    metadata=dict(metadata), headings=markdown_headings(text))


def check_chunks(doc: Document, chunks: list[Chunk], counter: TokenCounter, s: ChunkSettings) -> None:
    """What every contextual chunk keeps: own text and offsets, what is embedded within the limit and hashed."""
    for c in chunks:
        assert c.text == doc.text[c.char_start : c.char_end]
        assert c.embed_text == c.context + c.text
        assert c.token_count == counter.count(c.embed_text) <= s.max_tokens, c.chunk_id
        assert c.content_hash == sha(c.embed_text)
        if c.context:
            assert c.context.endswith("\n\n")
            assert counter.count(c.embed_text) - counter.count(c.text) <= prefix_reserve(s.max_tokens)


SECTION = "Words about the topic at hand, written plainly. " * 6
GUIDE = (
    "# Brewing Guide\n\nIntro paragraph.\n\n"
    f"## Grinding\n\n{SECTION}\n\n### Burr grinders\n\n{SECTION}\n\n{SECTION}\n\n"
    f"## Water\n\n{SECTION}\n\n```sh\n# not a heading: a shell comment\n```\n\n{SECTION}\n"
)


def test_markdown_chunks_carry_title_and_heading_path() -> None:
    doc = md_doc(GUIDE)
    chunks = chunk_document(doc, ON, PROXY)
    check_chunks(doc, chunks, PROXY, ON)
    assert len(chunks) > 3
    first = chunks[0]
    assert first.text.startswith("# Brewing Guide") and first.context == ""  # it starts with its title
    assert first.content_hash == sha(first.text)
    burr = next(c for c in chunks if "### Burr" not in c.text and c.metadata["headings"][-1] == "Burr grinders")
    assert burr.context == "Brewing Guide › Grinding › Burr grinders\n\n"
    water = [c for c in chunks if c.char_start > GUIDE.index("## Water")]
    assert water and all(c.metadata["headings"] == ["Brewing Guide", "Water"] for c in water)
    assert all("shell comment" not in h for c in chunks for h in c.metadata["headings"])


def test_a_chunk_does_not_repeat_the_heading_it_starts_with() -> None:
    doc = md_doc(GUIDE)
    for c in chunk_document(doc, ON, PROXY):
        first_line = c.text.lstrip().split("\n", 1)[0]
        if first_line.startswith("#"):
            assert first_line.lstrip("# ") not in c.context


def test_fenced_code_is_not_a_heading() -> None:
    text = "# T\n\n```python\n# comment\n## also\n```\n~~~\n# tilde fence\n~~~\n## Real ##\n"
    assert [(level, words) for _, level, words in markdown_headings(text)] == [(1, "T"), (2, "Real")]


def test_html_headings_are_found_where_the_text_has_them(tmp_path: Path) -> None:
    page = ("<html><head><title>Coffee  Methods</title></head><body><h1>Methods</h1><p>intro</p>"
            f"<h2>Pour <b>over</b></h2><p>{SECTION * 3}</p><h3>Kettles</h3><p>{SECTION * 3}</p></body></html>")
    text, title, headings = html_document(page)
    assert title == "Coffee Methods"
    assert [(lv, w) for _, lv, w in headings] == [(1, "Methods"), (2, "Pour over"), (3, "Kettles")]
    for start, level, words in headings:
        assert text[start:].startswith("#" * level + " " + words)
    (tmp_path / "c.html").write_text(page, encoding="utf-8")
    [doc] = iter_documents(tmp_path / "c.html")
    assert doc.headings == headings
    chunks = chunk_document(doc, ON, PROXY)
    check_chunks(doc, chunks, PROXY, ON)
    assert chunks[0].context == "Coffee Methods\n\n"  # the <title> is not the h1 the chunk starts with
    assert any(c.context == "Coffee Methods › Methods › Pour over › Kettles\n\n" for c in chunks) or any(
        c.context.endswith("Pour over › Kettles\n\n") for c in chunks)


def test_a_page_holding_the_heading_mark_gets_no_headings_and_the_same_text() -> None:
    text, _, headings = html_document("<h2>A</h2><p>odd \ufdd0 character</p>")
    assert headings == () and text == "## A\n\nodd \ufdd0 character"


def test_jsonl_title_field_is_kept_and_used(tmp_path: Path) -> None:
    body = "Why is Python slow?\n\n" + SECTION * 4
    (tmp_path / "faq.jsonl").write_text(
        '{"id": "q1", "title": "Why is Python slow?", "text": ' + repr(body).replace("'", '"') + "}\n"
        '{"id": "q2", "title": "Own", "metadata": {"title": "Kept"}, "text": "short"}\n', encoding="utf-8")
    q1, q2 = iter_documents(tmp_path / "faq.jsonl", SourceReport())
    assert q1.metadata == {"title": "Why is Python slow?"} and q2.metadata == {"title": "Kept"}
    chunks = chunk_document(q1, ON, PROXY)
    check_chunks(q1, chunks, PROXY, ON)
    assert chunks[0].context == "" and all(c.context == "Why is Python slow?\n\n" for c in chunks[1:])
    [short] = chunk_document(q2, ON, PROXY)
    assert short.context == "Kept\n\n" and short.text == "short"


def test_plain_text_and_headingless_documents_chunk_as_without_context() -> None:
    text = (SECTION + "\n\n") * 6
    doc = Document(doc_id="a.txt", source_path="a.txt", text=text, content_hash=text_hash(text), doc_type="txt")
    assert chunk_document(doc, ON, PROXY) == chunk_document(doc, OFF, PROXY)


def test_a_document_that_fits_one_chunk_keeps_its_boundaries() -> None:
    doc = md_doc("Some intro.\n\n## Only section\n\n" + SECTION, title="A title")
    [off] = chunk_document(doc, OFF, PROXY)
    [on] = chunk_document(doc, ON, PROXY)
    assert (on.char_start, on.char_end) == (off.char_start, off.char_end)
    assert on.context == "A title\n\n" and on.content_hash != off.content_hash


def test_fit_prefix_drops_outer_elements_then_cuts_the_last() -> None:
    text = "body " * 10
    base = PROXY.count(text)
    prefix, tokens = fit_prefix(["Title", "Section", "Sub"], text, base, PROXY, max_tokens=200, cap=64)
    assert prefix == "Title › Section › Sub\n\n" and tokens == PROXY.count(prefix + text)
    prefix, _ = fit_prefix(["A long document title " * 4, "Section", "Sub"], text, base, PROXY, max_tokens=200,
                           cap=12)
    assert prefix == "Section › Sub\n\n"
    prefix, tokens = fit_prefix(["word " * 40], text, base, PROXY, max_tokens=200, cap=20)
    assert prefix.endswith("…\n\n") and tokens - base <= 20
    assert fit_prefix(["Title"], text, base, PROXY, max_tokens=base, cap=64) == ("", base)  # no room at all


_WORDS = st.sampled_from(["alpha", "beta", "Ёжик", "под", "деревом", "x", "42", "…", "C#", "##", "日本", " "])
_LINE = st.lists(_WORDS, min_size=0, max_size=30).map(" ".join)
_SECTION = st.tuples(st.integers(min_value=1, max_value=7), _LINE, st.lists(_LINE, max_size=8).map("\n".join))
DOCS = st.lists(_SECTION, max_size=8).map(
    lambda sections: "".join(f"{'#' * level} {title}\n\n{body}\n\n" for level, title, body in sections))
PROP = settings(max_examples=int(os.environ.get("CHUNKING_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@PROP
@given(text=DOCS, title=st.one_of(st.just(""), _LINE), limit=st.sampled_from([24, 40, 64, 128]),
       overlap=st.sampled_from([0, 4]))
def test_property_prefix_and_chunk_never_exceed_the_limit(e5: TokenCounter, text: str, title: str, limit: int,
                                                          overlap: int) -> None:
    doc = md_doc(text, **({"title": title} if title.strip() else {}))
    s = ChunkSettings(max_tokens=limit, target_tokens=limit, overlap_tokens=overlap, contextual=True)
    for counter in (PROXY, e5):
        check_chunks(doc, chunk_document(doc, s, counter), counter, s)
