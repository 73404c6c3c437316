"""Extractive answer: the answer units of the hits nearest the question (sentences, list items, table rows, a
matching heading's whole section), cited [n] by first use, within a length budget, checked as every Answer is.

Sync and offline; the caller supplies the passage embedder. The chat answer (chat.py) reuses finish_answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from ..index.bm25 import tokenize
from ..records import Hit
from .records import Answer, Citation, Source
from .units import CODE, HEADING, ITEM, ROW, SENTENCE, Unit, split_units

__all__ = ["DEFAULT_MAX_CHARS", "check_citations", "extractive_answer", "finish_answer"]

_CITATION = re.compile(r"\[(\d+)\]")
DEFAULT_MAX_CHARS = 800  # [ask] answer_max_chars
# Units embedded per question, headings first: bounds the local model's work (a short unit takes it ~0.05 s
# on 2 quiet cores, 0.3 s on busy ones); the rest of a long chunk can still be quoted in a heading's section.
# 32 is the fewest with which the answer check (tests/answer/answer_check.toml) passed whole (24 lost one).
MAX_SCORED_UNITS = 32
RANK_BONUS = 0.02  # per rank: a unit of a higher-ranked chunk wins a near tie (the chunk's score carries context)
# Units scoring further below the best one are not quoted just to fill the budget: e5's cosines of related
# texts sit within ~0.1 of each other, and a unit 0.06 behind the best is usually about something else.
RELEVANCE_MARGIN = 0.06
# A heading is a few words, which e5 scores lower than a sentence on the same subject ("Создание окружения"
# 0.86 against "Как создать виртуальное окружение в Python?", below a stray sentence of the same chunk at 0.89);
# a heading all of whose words the question has (BM25's stemming) gains this much.
HEADING_WORDS_BONUS = 0.05

Key = tuple[int, int]  # (hit number in the hits list, unit number in that hit's units)


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


def _units_of(hit: Hit) -> list[Unit]:
    html = hit.source_path.lower().endswith((".html", ".htm"))
    return split_units(hit.text, title=hit.char_start == 0, lines_are_blocks=html)


def _to_score(units: Sequence[Sequence[Unit]]) -> list[Key]:
    """The units to embed: every heading, then the others in rank order, each distinct text once, capped."""
    keys: list[Key] = []
    seen: set[str] = set()
    for want_heading in (True, False):
        for h, hit_units in enumerate(units):
            for i, unit in enumerate(hit_units):
                if unit.kind == CODE or (unit.kind == HEADING) != want_heading or unit.text.lower() in seen:
                    continue
                seen.add(unit.text.lower())
                keys.append((h, i))
    return keys[:MAX_SCORED_UNITS]


def _heading_bonus(unit: Unit, asked: set[str]) -> float:
    """HEADING_WORDS_BONUS for a heading whose every stemmed word is in the question, else 0.

    Only a whole match counts: "How big is a black hole?" names something "what is a black hole?" does not ask.
    """
    words = set(tokenize(unit.text)) if unit.kind == HEADING else set()
    # Snowball leaves some forms apart ("создание" -> создан, "создать" -> созда): a stem that begins the
    # other counts, from 4 letters.
    found = all(any(w == a or (min(len(w), len(a)) >= 4 and (w.startswith(a) or a.startswith(w))) for a in asked)
                for w in words)
    return HEADING_WORDS_BONUS if words and found else 0.0


def _cost(unit: Unit) -> int:
    """Characters the unit adds to the answer: its line (code indented), a marker, a citation ` [n]`."""
    indent = 4 * (unit.text.count("\n") + 1) if unit.kind == CODE else 0
    return len(unit.text) + len(unit.marker) + indent + 6


def _select(units: Sequence[Sequence[Unit]], scored: Sequence[Key], scores: np.ndarray,
            max_chars: int) -> dict[Key, float]:
    """The units to quote, each with the score that brought it in (a section's units carry their heading's).

    Best first, while within RELEVANCE_MARGIN of the first one quoted and within the budget (which the first
    may exceed alone). A lead (a unit with a body) is never quoted alone: a heading comes with its whole
    section or not at all, a "...:" or a question with as much of its body as fits.
    """
    chosen: dict[Key, float] = {}
    texts: set[str] = set()
    used = 0
    order = np.argsort(-scores, kind="stable")
    best = 0.0  # the margin counts from the first unit quoted, not from a heading passed over
    for j in order.tolist():
        score = float(scores[j])
        if chosen and (score < best - RELEVANCE_MARGIN or used >= max_chars):
            break
        h, i = scored[j]
        unit = units[h][i]
        if (h, i) in chosen or unit.text in texts:
            continue
        body = [b for b in unit.body if (h, b) not in chosen and units[h][b].text not in texts]
        group = [i]
        if unit.body:  # a lead: never quoted without what it introduces
            if unit.kind == HEADING:  # its whole section, or nothing (its units still compete on their own)
                if not body or used + sum(_cost(units[h][k]) for k in [i, *body]) > max_chars:
                    continue
                group += body
            else:  # "...:" or a question: as much of its list, code or answer as fits, in order
                left = max_chars - used - _cost(unit)
                for b in body:
                    if _cost(units[h][b]) > left:
                        break
                    group.append(b)
                    left -= _cost(units[h][b])
                if len(group) == 1:
                    continue
        elif unit.kind == HEADING:
            continue  # a heading with an empty section answers nothing
        elif chosen and used + _cost(unit) > max_chars:
            continue  # a smaller unit further down may still fit
        if not chosen:
            best = score
        for g in group:
            chosen[(h, g)] = score
            texts.add(units[h][g].text)
            used += _cost(units[h][g])
    if not chosen:  # every unit was a lead too long to quote: the best unit that is no lead, else the best
        plain = [j for j in order.tolist()
                 if not units[scored[j][0]][scored[j][1]].body and units[scored[j][0]][scored[j][1]].kind != HEADING]
        j = plain[0] if plain else int(order[0])
        chosen[scored[j]] = float(scores[j])
    return chosen


def _render(units: Sequence[Unit], picked: Sequence[int], n: int) -> list[str]:
    """One source's chosen units as lines, in document order: a paragraph's sentences share a line, items,
    rows and headings have their own, code is indented; [n] ends each prose line and each list or table."""
    lines: list[tuple[str, str]] = []  # (kind, line)
    prev: Unit | None = None
    for i in picked:
        unit = units[i]
        if unit.kind == SENTENCE and prev is not None and prev.kind == SENTENCE and prev.block == unit.block:
            lines[-1] = (SENTENCE, f"{lines[-1][1]} {unit.text}")
        elif unit.kind == HEADING:
            lines.append((HEADING, unit.text if unit.text[-1] in ".!?…:" else f"{unit.text}:"))
        elif unit.kind == ITEM:
            lines.append((ITEM, f"{unit.marker or '-'} {unit.text}"))
        elif unit.kind == CODE:
            lines.append((CODE, "\n".join(f"    {line}" if line.strip() else "" for line in unit.text.split("\n"))))
        else:
            lines.append((unit.kind, unit.text))
        prev = unit
    out = []
    cited = False
    for k, (kind, line) in enumerate(lines):
        run_ends = kind in (ITEM, ROW) and (k + 1 == len(lines) or lines[k + 1][0] != kind)
        if kind == SENTENCE or run_ends:
            line, cited = f"{line} [{n}]", True
        out.append(line)
    if not cited:  # a heading over code only
        out[0] = f"{out[0]} [{n}]"
    return out


def extractive_answer(
    question: str,
    query_vector: np.ndarray,
    hits: Sequence[Hit],
    embed_passages: Callable[[list[str]], np.ndarray],
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> Answer:
    """The answer units of the hits most similar to the question, within about max_chars characters.

    Units (answer/units.py) are scored by the model, query against passage (`embed_passages` returns
    normalised vectors in the index's space); a heading that scores among the best brings its whole
    section when it fits. Sources are the chunks quoted, numbered [1..] in the order the answer uses them,
    most relevant first; each one's units keep their document order.
    """
    units = [_units_of(hit) for hit in hits]
    scored = _to_score(units)
    if not scored:
        return Answer(question, "No relevant passages were found.", [], grounded=False)
    vectors = embed_passages([units[h][i].text for h, i in scored])
    asked = set(tokenize(question))
    bonus = np.array([RANK_BONUS * (len(hits) - h) + _heading_bonus(units[h][i], asked) for h, i in scored],
                     dtype=np.float32)
    scores = vectors @ np.asarray(query_vector, dtype=np.float32).reshape(-1) + bonus
    chosen = _select(units, scored, scores, max_chars)
    by_hit: dict[int, list[int]] = {}
    for h, i in sorted(chosen, key=lambda key: -chosen[key]):
        by_hit.setdefault(h, []).append(i)
    lines: list[str] = []
    sources: list[Source] = []
    for n, (h, picked) in enumerate(by_hit.items(), 1):
        hit = hits[h]
        sources.append(Source(n=n, chunk_id=hit.chunk_id, source_path=hit.source_path, char_start=hit.char_start,
                              char_end=hit.char_end, score=round(hit.score, 4)))
        lines += _render(units[h], sorted(picked), n)
    return finish_answer(Answer(question, "\n".join(lines), sources))
