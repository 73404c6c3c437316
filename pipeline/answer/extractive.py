"""Extractive answer: the hits' sentences nearest the question, cited [n], checked as every Answer is.

Sync and offline; the caller supplies the passage embedder. The chat answer (chat.py) reuses finish_answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from ..records import Hit
from .records import Answer, Citation, Source

__all__ = ["check_citations", "extractive_answer", "finish_answer", "sources_of", "split_sentences"]

# A sentence ends at . ! ? … (optionally closed by quotes or brackets) followed by whitespace, or at a
# blank line; headings and list items end at their line break.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'»”)\]]*\s+|\n\s*\n|\n(?=\s*(?:[#*\-•]|\d+\.)\s)")
_CITATION = re.compile(r"\[(\d+)\]")
MAX_SENTENCES = 60


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans (start, end) of text, whitespace trimmed."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        piece = text[a:b]
        stripped = piece.strip()
        if len(stripped) >= 3:
            lead = len(piece) - len(piece.lstrip())
            out.append((a + lead, a + lead + len(stripped)))
    return out


def check_citations(text: str, n_sources: int) -> tuple[list[int], list[int]]:
    """The [n] cited in text that exist among 1..n_sources, and those that do not."""
    cited = sorted({int(m) for m in _CITATION.findall(text)})
    return [c for c in cited if 1 <= c <= n_sources], [c for c in cited if not 1 <= c <= n_sources]


def finish_answer(answer: Answer, extra_cited: Sequence[int] = ()) -> Answer:
    """Check the [n] of answer.text (plus extra_cited, e.g. a JSON citations list) against its sources.

    Fills cited, unknown_citations, citations and grounded; an answer citing nothing it was given is flagged.
    """
    cited, unknown = check_citations(answer.text, len(answer.sources))
    by_n = {s.n: s for s in answer.sources}
    extra = {int(n) for n in extra_cited}
    answer.cited = sorted(set(cited) | {n for n in extra if n in by_n})
    answer.unknown_citations = sorted(set(unknown) | {n for n in extra if n not in by_n})
    answer.citations = [Citation(n, by_n[n].chunk_id, by_n[n].source_path, by_n[n].char_start, by_n[n].char_end)
                        for n in answer.cited]
    answer.grounded = bool(answer.cited)
    return answer


def sources_of(hits: Sequence[Hit]) -> list[Source]:
    return [Source(n=h.rank, chunk_id=h.chunk_id, source_path=h.source_path, char_start=h.char_start,
                   char_end=h.char_end, score=round(h.score, 4)) for h in hits]


def extractive_answer(
    question: str,
    query_vector: np.ndarray,
    hits: Sequence[Hit],
    embed_passages: Callable[[list[str]], np.ndarray],
    *,
    max_sentences: int = 3,
) -> Answer:
    """The sentences of the hits most similar to the question, each cited as [rank].

    `embed_passages` returns normalised vectors in the index's space.
    """
    sources = sources_of(hits)
    candidates: list[tuple[int, str]] = []
    for hit in hits:
        for a, b in split_sentences(hit.text):
            sentence = " ".join(hit.text[a:b].split())
            if not sentence.startswith("#"):
                candidates.append((hit.rank, sentence))
    candidates = candidates[:MAX_SENTENCES]
    if not candidates:
        return Answer(question, "No relevant passages were found.", sources, grounded=False)
    vectors = embed_passages([s for _, s in candidates])
    # Prefer sentences from higher-ranked chunks a little: the chunk score carries context a sentence lacks.
    rank_bonus = np.array([0.02 * (len(hits) - rank) for rank, _ in candidates], dtype=np.float32)
    scores = vectors @ np.asarray(query_vector, dtype=np.float32).reshape(-1) + rank_bonus
    best = sorted(np.argsort(-scores)[:max_sentences].tolist())
    parts = [f"{candidates[i][1]} [{candidates[i][0]}]" for i in best]
    return finish_answer(Answer(question, " ".join(parts), sources))
