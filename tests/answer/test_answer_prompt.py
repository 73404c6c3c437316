"""The pure parts of a chat answer: fitting numbered sources into a context, the messages, the citation check."""

from __future__ import annotations

import json

from pipeline.answer.extractive import finish_answer
from pipeline.answer.prompt import (
    SEARCH_FUNCTION,
    Budget,
    build_messages,
    fit_hits,
    overhead_cost,
    search_result,
)
from pipeline.answer.records import Answer, Source
from pipeline.records import Hit


class CharCounter:
    """One token per 4 characters, plus 1 per text: easy to reason about."""

    name = "chars"

    def count(self, text: str) -> int:
        return len(text) // 4 + 1


def _hit(rank: int, chars: int) -> Hit:
    text = ("word " * chars)[:chars]
    return Hit(rank=rank, score=0.9 - rank / 100, chunk_id=f"d{rank}:0", doc_id=f"d{rank}", source_path=f"d{rank}.md",
               chunk_index=0, char_start=10, char_end=10 + chars, text=text)


def test_sources_are_numbered_and_fitted_in_rank_order() -> None:
    budget = Budget(CharCounter(), max_input_tokens=200, reserve_tokens=50)  # 150 tokens for sources
    fitted, dropped = fit_hits([_hit(1, 200), _hit(2, 800), _hit(3, 200)], budget)
    # "[n] " + 199 flattened chars cost 51 tokens: the 800-char hit is passed over, the third one still fits
    assert [(n.source.n, n.source.chunk_id) for n in fitted] == [(1, "d1:0"), (2, "d3:0")]
    assert dropped == 1 and budget.left == 150 - 2 * 51
    assert fitted[0].source.char_start == 10 and fitted[0].source.char_end == 210


def test_search_results_continue_the_numbering_and_skip_known_chunks() -> None:
    budget = Budget(CharCounter(), max_input_tokens=10_000, reserve_tokens=0)
    fitted, _ = fit_hits([_hit(1, 40), _hit(5, 40)], budget, first_n=4, skip_chunks=frozenset({"d1:0"}))
    assert [n.source.n for n in fitted] == [4]
    result = json.loads(search_result("q", fitted, note="also relevant: [1]"))
    assert result["sources"].startswith("[4] word word") and result["note"] == "also relevant: [1]"


def test_messages_put_the_sources_in_the_system_prompt() -> None:
    budget = Budget(CharCounter(), max_input_tokens=10_000, reserve_tokens=0)
    fitted, _ = fit_hits([_hit(1, 30)], budget)
    system, user = build_messages("Why?", fitted, can_search=True)
    assert system["role"] == "system" and "\n[1] word word" in system["content"]
    assert "search_corpus" in system["content"] and user == {"role": "user", "content": "Why?"}
    assert "search_corpus" not in build_messages("Why?", fitted, can_search=False)[0]["content"]
    assert overhead_cost(budget, "Why?", [SEARCH_FUNCTION]) > overhead_cost(budget, "Why?", [])


def test_citations_are_checked_against_the_sources() -> None:
    sources = [Source(n, f"c{n}", f"p{n}", 0, 5, 1.0) for n in (1, 2)]
    answer = finish_answer(Answer("q", "A [2]. B [9].", sources), extra_cited=[1, 4])
    assert answer.cited == [1, 2] and answer.unknown_citations == [4, 9] and answer.grounded
    assert [(c.n, c.chunk_id) for c in answer.citations] == [(1, "c1"), (2, "c2")]
    assert not finish_answer(Answer("q", "nothing cited", sources)).grounded
