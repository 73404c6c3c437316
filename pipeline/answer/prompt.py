"""Prompt: the messages, numbered sources and function definitions of a grounded answer, fitted to a context.

Pure and sync: hits and a token counter in, message dicts out; knows nothing of HTTP or of the loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..records import Hit
from ..tokens import TokenCounter
from .records import Source

__all__ = [
    "ANSWER_FUNCTION",
    "ANSWER_SCHEMA",
    "SEARCH_FUNCTION",
    "Budget",
    "Numbered",
    "build_messages",
    "fit_hits",
    "overhead_cost",
    "search_result",
    "system_prompt",
]

SEARCH_FUNCTION: dict[str, Any] = {
    "name": "search_corpus",
    "description": "Search the indexed document corpus for more passages when the sources given do not answer "
                   "the question. Returns numbered sources; cite them as [n].",
    "parameters": {"type": "object",
                   "properties": {"query": {"type": "string", "description": "what to search for"}},
                   "required": ["query"]},
}
ANSWER_FUNCTION = "grounded_answer"
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "description": "the answer, citing sources as [n]"},
        "citations": {"type": "array", "description": "the sources the answer uses",
                      "items": {"type": "object",
                                "properties": {"n": {"type": "integer", "description": "source number"},
                                               "chunk_id": {"type": "string", "description": "its chunk id"}},
                                "required": ["n"]}},
    },
    "required": ["answer", "citations"],
}
_INSTRUCTIONS = (
    "You answer questions using only the numbered sources below. Cite every fact with the number of its "
    "source in square brackets, like [1] or [2][3]. If the sources do not contain the answer, say so "
    "plainly and do not invent one. Answer in the language of the question, briefly."
)
_SEARCH_HINT = " If they are not enough, call search_corpus with a better query."


@dataclass(frozen=True)
class Numbered:
    """A source as the model sees it: its number and its text on one line."""

    source: Source
    text: str

    def line(self) -> str:
        return f"[{self.source.n}] {self.text}"


class Budget:
    """Tokens left in the model's context after the reserved answer length; spent by each message added."""

    def __init__(self, counter: TokenCounter, max_input_tokens: int, reserve_tokens: int) -> None:
        self.counter = counter
        self.left = max_input_tokens - reserve_tokens

    def cost(self, text: str) -> int:
        return self.counter.count(text)

    def spend(self, text: str) -> None:
        self.left -= self.cost(text)


def _flat(text: str) -> str:
    return " ".join(text.split())


def fit_hits(hits: Sequence[Hit], budget: Budget, *, first_n: int = 1,
             skip_chunks: frozenset[str] = frozenset()) -> tuple[list[Numbered], int]:
    """The hits that fit the budget, in rank order, numbered from first_n; and how many did not fit.

    A hit too big for what is left is passed over (a smaller one after it may still fit).
    """
    out: list[Numbered] = []
    dropped = 0
    for hit in hits:
        if hit.chunk_id in skip_chunks:
            continue
        text = _flat(hit.text)
        n = first_n + len(out)
        cost = budget.cost(f"[{n}] {text}")
        if cost > budget.left:
            dropped += 1
            continue
        budget.left -= cost
        out.append(Numbered(Source(n=n, chunk_id=hit.chunk_id, source_path=hit.source_path,
                                   char_start=hit.char_start, char_end=hit.char_end, score=round(hit.score, 4)),
                            text))
    return out, dropped


def system_prompt(numbered: Sequence[Numbered], *, can_search: bool) -> str:
    lines = [line.line() for line in numbered] or ["(no sources were found)"]
    hint = _SEARCH_HINT if can_search else ""
    return f"{_INSTRUCTIONS}{hint}\n\nSources:\n" + "\n".join(lines)


def build_messages(question: str, numbered: Sequence[Numbered], *, can_search: bool) -> list[dict[str, Any]]:
    """[system: instructions + numbered sources, user: the question]."""
    return [{"role": "system", "content": system_prompt(numbered, can_search=can_search)},
            {"role": "user", "content": question}]


def search_result(query: str, numbered: Sequence[Numbered], *, note: str = "") -> str:
    """The search_corpus result: a JSON string whose `sources` are "[n] text" lines, numbering continued."""
    result: dict[str, Any] = {"query": query, "sources": "\n".join(n.line() for n in numbered)}
    if note:
        result["note"] = note
    return json.dumps(result, ensure_ascii=False)


def overhead_cost(budget: Budget, question: str, functions: Sequence[dict[str, Any]]) -> int:
    """Tokens of everything but the sources: instructions, question and function definitions."""
    fixed = system_prompt([], can_search=bool(functions)) + "\n" + question
    return budget.cost(fixed) + sum(budget.cost(json.dumps(f, ensure_ascii=False)) for f in functions)
