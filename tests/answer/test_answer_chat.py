"""ask with a chat model, against the GigaChat emulator over real HTTP: streamed, cited, searched, structured, failed.

The index is built once per module with the offline model; only the answer goes to the (emulated) service.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline import api
from pipeline.config import Config, load_config
from pipeline.emulator import EmulatorProfile, start_emulator
from pipeline.errors import BadRequestError, ConfigError, ContentRefusedError, NetworkError

DOCS = {
    "space.txt": "A black hole is a region of spacetime where gravity is so strong that nothing, not even light, "
                 "can escape. It forms when a massive star collapses at the end of its life.",
    "coffee.md": "# Espresso\n\nEspresso is brewed by forcing hot water through finely ground coffee at high "
                 "pressure. A shot takes about 25 seconds.",
    "metro.md": "# Московское метро\n\nМосковский метрополитен открылся в 1935 году. Станция «Маяковская» "
                "известна своей архитектурой.",
    "bread.md": "# Sourdough\n\nA sourdough starter is fed with flour and water every day. The dough rises slowly "
                "and is baked in a hot oven at 230 degrees.",
}


def build_index(root: Path) -> tuple[Path, dict[str, str]]:
    """A small corpus embedded with the local model; the vector cache is shared by the session's modules."""
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    env = {"HOME": str(root), "PATH": os.environ.get("PATH", ""),
           "PIPELINE_CACHE_DIR": str(root.parent / "ask-vector-cache")}
    out = root / "out"
    api.embed(load_config(None, env, model="e5-small-local", corpus=corpus, out_dir=out))
    return out, env


def config_for(out: Path, env: dict[str, str], emu: Any | None, **ask: Any) -> Config:
    full = dict(env)
    if emu is not None:
        full |= {"GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
                 "GIGACHAT_CREDENTIALS": emu.credentials, "GIGACHAT_TIMEOUT": "10"}
    config = load_config(None, full, model="e5-small-local", out_dir=out)
    return replace(config, ask=replace(config.ask, **ask)) if ask else config


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return build_index(tmp_path_factory.mktemp("ask-chat"))


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with start_emulator(EmulatorProfile()) as running:
        yield running


@pytest.fixture
def cfg(indexed: tuple[Path, dict[str, str]], emu: Any) -> Any:
    out, env = indexed
    return lambda **ask: config_for(out, env, emu, **ask)


def _chat_calls(emu: Any) -> int:
    return int(emu.stats()["by_path"].get("/api/v1/chat/completions", 0))


def test_streamed_answer_cites_the_sources_it_was_given(cfg: Any) -> None:
    deltas: list[str] = []
    answer = api.ask(cfg(), "What is a black hole?", k=3, on_delta=deltas.append)
    assert answer.mode == "chat" and answer.model == "GigaChat-2-Lite"  # auto: credentials are set
    assert len(deltas) > 1 and "".join(deltas) == answer.text  # printed as it arrived, nothing lost
    assert "light" in answer.text and answer.finish_reason == "stop"
    assert answer.grounded and answer.cited and not answer.unknown_citations and not answer.warnings
    first = answer.sources[answer.cited[0] - 1]
    assert first.source_path == "space.txt"
    assert answer.citations[0].chunk_id == first.chunk_id and answer.citations[0].char_end > 0
    assert answer.usage["total_tokens"] > 0


@pytest.mark.parametrize("model", ["GigaChat-2-Pro", "GigaChat-2-Max"])
def test_pro_and_max_by_option(cfg: Any, model: str) -> None:
    answer = api.ask(cfg(), "Когда открылось московское метро?", k=2, chat_model=model)
    assert answer.model == model and "1935" in answer.text and answer.grounded
    assert answer.sources[answer.cited[0] - 1].source_path == "metro.md"


def test_the_model_searches_the_corpus_and_cites_the_new_sources(cfg: Any, emu: Any) -> None:
    searched: list[str] = []
    before = _chat_calls(emu)
    answer = api.ask(cfg(), "What is a black hole? Also search for «espresso shot»", k=1,
                     on_search=searched.append)
    assert searched == answer.searches == ["espresso shot"]
    assert _chat_calls(emu) - before == 2  # the call, then the answer after the function result
    assert [s.n for s in answer.sources] == [1, 2]  # numbering continues after the first retrieval
    assert answer.sources[1].source_path == "coffee.md" and answer.cited == [2] and answer.grounded
    assert "Espresso" in answer.text


def test_max_rounds_zero_offers_no_function(cfg: Any) -> None:
    answer = api.ask(cfg(max_rounds=0), "What is a black hole? Also search for «espresso shot»", k=1)
    assert answer.searches == [] and len(answer.sources) == 1


def test_json_is_structured_output_with_checked_citations(cfg: Any) -> None:
    answer = api.ask(cfg(), "Repeat exactly «black holes trap even light [1]»", k=2, structured=True)
    assert answer.mode == "structured" and answer.finish_reason == "stop"
    assert answer.text == "black holes trap even light [1]"
    assert answer.cited == [1] and answer.grounded
    (c,) = answer.citations
    assert (c.n, c.chunk_id, c.source_path) == (1, answer.sources[0].chunk_id, answer.sources[0].source_path)
    assert c.char_end > c.char_start >= 0


def test_structured_answer_citing_nothing_is_flagged(cfg: Any) -> None:
    answer = api.ask(cfg(), "Tell me about espresso", k=2, structured=True)
    assert not answer.grounded and answer.citations == []
    assert "cites none of the sources" in answer.warnings[-1]


def test_unknown_citation_is_flagged(cfg: Any) -> None:
    answer = api.ask(cfg(), "Repeat exactly «see [7]»", k=2, structured=True)
    assert answer.unknown_citations == [7] and not answer.grounded
    assert any("[7]" in w and "not among the sources" in w for w in answer.warnings)


def test_refusal_is_a_content_refused_error(cfg: Any) -> None:
    with pytest.raises(ContentRefusedError, match="refused to answer.*blacklist"):
        api.ask(cfg(), "Tell me about BLACKLISTED_TOPIC", k=1)


def test_answer_cut_at_max_tokens_is_kept_and_flagged(cfg: Any) -> None:
    answer = api.ask(cfg(max_tokens=5), "What is a black hole?", k=1)
    assert answer.truncated and answer.finish_reason == "length" and answer.text
    assert any("cut at max_tokens (5)" in w for w in answer.warnings)


def test_temperature_zero_is_a_bad_request(cfg: Any) -> None:
    with pytest.raises(BadRequestError, match=r"HTTP 422.*temperature") as info:
        api.ask(cfg(temperature=0.0), "What is a black hole?", k=1)
    assert info.value.status == 422


def test_stream_broken_midway_shows_what_arrived_then_fails(indexed: tuple[Path, dict[str, str]]) -> None:
    out, env = indexed
    shown: list[str] = []
    with start_emulator(EmulatorProfile(stream_break_after=3)) as broken:
        with pytest.raises(NetworkError, match="broke after .* characters.*incomplete"):
            api.ask(config_for(out, env, broken), "What is a black hole?", k=1, on_delta=shown.append)
        assert broken.stats()["streams_broken"] == 1  # not retried: text had been shown
    assert len(shown) == 3 and "".join(shown).strip()


def test_stream_broken_before_any_text_is_retried_once(indexed: tuple[Path, dict[str, str]]) -> None:
    out, env = indexed
    with start_emulator(EmulatorProfile(stream_break_after=0)) as broken:
        with pytest.raises(NetworkError, match="broke twice before any text"):
            api.ask(config_for(out, env, broken), "What is a black hole?", k=1, on_delta=lambda s: None)
        assert broken.stats()["streams_broken"] == 2


def test_without_a_chat_model_the_answer_stays_extractive(indexed: tuple[Path, dict[str, str]]) -> None:
    out, env = indexed
    offline = config_for(out, env, None)
    answer = api.ask(offline, "What is a black hole?", k=2)  # auto, no credentials: extractive
    assert answer.mode == "extractive" and answer.grounded
    with pytest.raises(ConfigError, match="needs GigaChat credentials"):
        api.ask(offline, "What is a black hole?", chat_model="GigaChat-2-Lite")


def test_chat_model_none_is_extractive_even_with_credentials(cfg: Any, emu: Any) -> None:
    before = _chat_calls(emu)
    assert api.ask(cfg(), "What is a black hole?", k=2, chat_model="none").mode == "extractive"
    assert _chat_calls(emu) == before


@pytest.mark.parametrize(("name", "needle"), [("GigaChat-9", "unknown model"), ("Embeddings", "not a chat model")])
def test_bad_chat_model_names_fail_before_any_work(cfg: Any, name: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        api.ask(cfg(), "What is a black hole?", chat_model=name)
