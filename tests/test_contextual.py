"""Tests for contextual chunks: the title and heading path embedded in front, within the limit, offsets kept."""

from __future__ import annotations

import hashlib
import json
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
    assert [c.context for c in chunks] == [
        "Coffee Methods\n\n",  # the <title> is not the h1 the chunk starts with
        "Coffee Methods › Methods › Pour over\n\n",
        "Coffee Methods › Methods › Pour over\n\n",  # it starts with "### Kettles": not repeated
        "Coffee Methods › Methods › Pour over › Kettles\n\n",
    ]


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


# --- off is today's chunking; the setting is part of the fingerprint -------------------------------------


def _pinned_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "guide.md").write_text(
        "# Brewing Guide\n\nIntro paragraph.\n\n## Grinding\n\n" + "Words about the topic at hand, written plainly. " * 6
        + "\n\n### Burr grinders\n\n" + "Burrs crush beans evenly. " * 8 + "\n\n## Water\n\n"
        + "Soft water extracts better. " * 8 + "\n", encoding="utf-8")
    (root / "page.html").write_text(
        "<html><head><title>Coffee</title></head><body><h1>Methods</h1><p>" + "Pour slowly over the grounds. " * 8
        + "</p><h2>Kettles</h2><p>" + "A gooseneck kettle helps. " * 8 + "</p></body></html>", encoding="utf-8")
    (root / "faq.jsonl").write_text(
        '{"id": "q1", "title": "Why grind fresh?", "text": "Why grind fresh?\\n\\n' + "Aroma fades within minutes. " * 12
        + '"}\n', encoding="utf-8")
    return root


def test_off_chunks_and_fingerprints_are_those_of_before_contextual_chunks(tmp_path: Path) -> None:
    """Pinned from main before this feature: an existing index and its cache must stay valid."""
    from pipeline.config import load_config
    from pipeline.run_context import RunContext

    docs = list(iter_documents(_pinned_corpus(tmp_path / "c")))
    s = ChunkSettings(max_tokens=64, target_tokens=64, overlap_tokens=8)
    rows = [(c.chunk_id, c.char_start, c.char_end, c.token_count, c.content_hash)
            for d in docs for c in chunk_document(d, s, PROXY)]
    assert len(rows) == 13
    assert sha(json.dumps(rows)) == "8d24d687410b9ff8ef625dbd364798b9697b93fdd6706c6b784011d63aa7c26b"
    ids = {}
    for model in ("e5-small-local", "Embeddings"):
        cfg = load_config(None, env={"PIPELINE_CONTEXTUAL": "0"}, model=model, out_dir=tmp_path / "out")
        ctx = RunContext.open(cfg, cfg.model_spec())
        assert "contextual" not in ctx.fingerprint["chunking"]
        ids[model] = ctx.fingerprint_id
    assert ids == {"e5-small-local": "68812e828f8b9236", "Embeddings": "583dca72ecfc2c89"}


def test_contextual_setting_is_in_the_fingerprint_and_read_from_config_and_env(tmp_path: Path) -> None:
    from dataclasses import replace

    from pipeline.config import load_config
    from pipeline.errors import ConfigError
    from pipeline.run_context import CONTEXTUAL_DEFAULT, RunContext

    cfg = load_config(None, env={}, model="Embeddings", out_dir=tmp_path / "out")
    assert cfg.chunking.contextual is None
    on = RunContext.open(replace(cfg, chunking=replace(cfg.chunking, contextual=True)), cfg.model_spec())
    off = RunContext.open(replace(cfg, chunking=replace(cfg.chunking, contextual=False)), cfg.model_spec())
    unset = RunContext.open(cfg, cfg.model_spec())  # no live index: the product default
    assert unset.settings.contextual is CONTEXTUAL_DEFAULT
    assert on.fingerprint["chunking"]["contextual"] is True and on.settings.contextual
    assert on.fingerprint_id != off.fingerprint_id and on.cache_key == off.cache_key  # vectors by text: one cache
    toml = tmp_path / "run.toml"
    toml.write_text("[chunking]\ncontextual = true\n", encoding="utf-8")
    assert load_config(toml, env={}).chunking.contextual is True
    assert load_config(toml, env={"PIPELINE_CONTEXTUAL": "0"}).chunking.contextual is False
    toml.write_text('[chunking]\ncontextual = "yes"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[chunking\] contextual: expected true or false"):
        load_config(toml, env={})
    with pytest.raises(ConfigError, match="PIPELINE_CONTEXTUAL"):
        load_config(None, env={"PIPELINE_CONTEXTUAL": "maybe"})


# --- a run against the emulator: the model gets the prefix, the index keeps the chunk's own text ----------


def test_embed_with_contextual_chunks_through_the_emulator(tmp_path: Path) -> None:
    import os
    from dataclasses import replace

    import numpy as np
    import pyarrow.parquet as pq

    from pipeline import api
    from pipeline.config import load_config
    from pipeline.emulator import EmulatorProfile, start_emulator
    from pipeline.emulator.vectors import embed_texts
    from pipeline.errors import ModelMismatchError
    from pipeline.run_context import RunContext
    from pipeline.store import current_snapshot

    corpus = _pinned_corpus(tmp_path / "corpus")
    (corpus / "guide.md").write_text("# Brewing Guide\n\n" + "".join(
        f"## Step {i}\n\n" + f"Step {i} says something about coffee that takes a while to say. " * 12 + "\n\n"
        for i in range(4)), encoding="utf-8")
    (corpus / "plain.txt").write_text("Plain text has no title and no headings.\n", encoding="utf-8")
    (corpus / "note.md").write_text("# Note\n\nA short note that fits one chunk.\n", encoding="utf-8")
    with start_emulator(EmulatorProfile()) as emu:
        env = {**os.environ, "GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
               "GIGACHAT_CREDENTIALS": emu.credentials}
        unset = load_config(None, env=env, model="Embeddings", corpus=corpus, out_dir=tmp_path / "out")
        on = replace(unset, chunking=replace(unset.chunking, contextual=True))
        off = replace(unset, chunking=replace(unset.chunking, contextual=False))
        before = api.embed(off)  # an index built before contextual chunks (or with them off)
        kept = api.embed(unset)  # unset follows that live index, whatever the default: nothing re-embedded
        with pytest.raises(ModelMismatchError, match="--new-index"):
            api.embed(on)
        report = api.embed(on, new_index=True)
        beside = Path(report.out_dir)
        assert beside != unset.out_dir
        # the chunks that need no prefix and keep their boundaries (plain text, a note that starts with its
        # title) come from the cache the first run filled; the rest is embedded with their prefix
        assert report.cached >= 2 and report.embedded == report.chunks - report.cached > 0
        follow = replace(unset, out_dir=beside)
        again = api.embed(follow, verify=True)  # unset follows the live index: contextual, nothing to embed
        with (corpus / "guide.md").open("a", encoding="utf-8") as f:
            f.write("## Step 4\n\n" + "Serve it hot, and talk about it at length. " * 14)
        plan = api.plan(follow)  # what embed will send, counted the way embed counts it
        edited = api.embed(follow)
        chunked_now = list(api.chunk_corpus(follow, corpus))
    assert before.exit_code == kept.exit_code == report.exit_code == again.exit_code == edited.exit_code == 0
    assert kept.embedded == 0 and kept.chunks == before.chunks
    assert again.embedded == 0 and again.chunks == report.chunks
    assert not any("other settings" in n for n in plan.notes)
    assert (plan.texts_to_send, plan.tokens) == (edited.embedded, edited.tokens) and edited.embedded > 0
    assert RunContext.open(follow, follow.model_spec()).settings.contextual

    snap = current_snapshot(beside)
    table = pq.read_table(snap.vectors_path)
    meta = json.loads(table.schema.metadata[b"pipeline"])
    assert meta["fingerprint"]["chunking"]["contextual"] is True
    texts = {d.doc_id: d.text for d in iter_documents(corpus)}
    expected = {c.chunk_id: c for c in chunked_now}
    prefixed = 0
    for row, vector in zip(table.drop(["vector"]).to_pylist(), table.column("vector").to_numpy(zero_copy_only=False),
                           strict=True):
        assert row["text"] == texts[row["doc_id"]][row["char_start"] : row["char_end"]]
        chunk = expected[row["chunk_id"]]
        assert row["content_hash"] == sha(chunk.context + row["text"])
        sent = embed_texts("Embeddings", [chunk.context + row["text"]])[0]
        assert np.allclose(vector, sent / np.linalg.norm(sent), atol=1e-5)
        if chunk.context:
            prefixed += 1
            assert json.loads(row["metadata"])["headings"]
            bare = embed_texts("Embeddings", [row["text"]])[0]
            assert not np.allclose(vector, bare / np.linalg.norm(bare), atol=1e-3)
    assert prefixed >= 3
