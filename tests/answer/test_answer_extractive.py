import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.answer.extractive import check_citations, extractive_answer
from pipeline.answer.units import CODE, HEADING, ITEM, ROW, SENTENCE, split_sentences, split_units
from pipeline.records import Hit
from pipeline.sources import html_to_text


def test_split_sentences_english_and_russian() -> None:
    text = "Первое предложение. Второе — с «кавычками»! Third one? Use e.g. a scale, т. е. весы. Yes."
    pieces = [text[a:b] for a, b in split_sentences(text)]
    assert pieces == ["Первое предложение.", "Второе — с «кавычками»!", "Third one?",
                      "Use e.g. a scale, т. е. весы.", "Yes."]


MARKDOWN = """# Virtual environments

A venv holds its own packages. Create one from the project root:

```bash
python3 -m venv .venv
```

## Common problems

- **Wrong interpreter.** Check `which python`;
- **Moving it.** Recreate it
  from requirements.txt.

| command | what it does |
| --- | --- |
| pip list | lists packages |

Why commit the lock file? It pins versions. Everyone gets the same ones.

# Next topic
"""


def test_split_units_of_markdown_know_what_each_unit_introduces() -> None:
    units = split_units(MARKDOWN)
    assert [(u.kind, u.text) for u in units] == [
        (HEADING, "Virtual environments"),
        (SENTENCE, "A venv holds its own packages."),
        (SENTENCE, "Create one from the project root:"),
        (CODE, "python3 -m venv .venv"),
        (HEADING, "Common problems"),
        (ITEM, "**Wrong interpreter.** Check `which python`;"),
        (ITEM, "**Moving it.** Recreate it from requirements.txt."),  # its continuation line joined
        (ROW, "| command | what it does |"),
        (ROW, "| pip list | lists packages |"),  # the | --- | rule is no unit
        (SENTENCE, "Why commit the lock file?"),
        (SENTENCE, "It pins versions."),
        (SENTENCE, "Everyone gets the same ones."),
        (HEADING, "Next topic"),
    ]
    assert [u.level for u in units if u.kind == HEADING] == [1, 2, 1]
    assert units[5].marker == "-" and units[1].block == units[2].block != units[3].block
    assert units[0].body == tuple(range(1, 12))  # up to the next heading of its level, subsections included
    assert units[4].body == tuple(range(5, 12))
    assert units[2].body == (3,)  # "...:" introduces the code after it
    assert units[9].body == (10, 11)  # a question, the rest of its paragraph
    assert units[1].body == units[12].body == ()
    for u in units:  # each span is where its text came from
        span = MARKDOWN[u.start:u.end]
        assert u.text in (span if u.kind == CODE else " ".join(span.split())), u


def test_html_list_items_come_under_their_heading() -> None:
    page = ("<h1>Компост</h1><p>Компост — это удобрение. Его делают из отходов.</p><h2>Что нельзя класть</h2>"
            "<ul>\n <li>мясо, рыбу;</li>\n <li>Больные растения</li>\n <li>пластик и всё, что обработано.</li>\n"
            "</ul><p>Остальное можно.</p>")
    text, _ = html_to_text(page)
    units = split_units(text, title=True, lines_are_blocks=True)
    assert [(u.kind, u.text) for u in units] == [
        (HEADING, "Компост"), (SENTENCE, "Компост — это удобрение."), (SENTENCE, "Его делают из отходов."),
        (HEADING, "Что нельзя класть"),
        (ITEM, "мясо, рыбу;"), (ITEM, "Больные растения"), (ITEM, "пластик и всё, что обработано."),
        (SENTENCE, "Остальное можно."),
    ]
    assert units[3].body == (4, 5, 6, 7)


def test_a_plain_text_title_is_a_heading_only_at_the_start_of_its_document() -> None:
    text = "Choosing an Oven Temperature\n\nLean breads are baked hot. Enriched ones less so.\n"
    assert split_units(text, title=True)[0].kind == HEADING and split_units(text, title=True)[0].body == (1, 2)
    assert split_units(text)[0].kind == ITEM  # a later chunk's short line is no title


VOCAB = ["compost", "not", "meat", "plants", "bread", "oven", "coffee", "star", "ready"]


def _embed(texts: list[str]) -> np.ndarray:
    """Word counts over VOCAB: a passage embedder whose cosines are easy to reason about."""
    m = np.array([[t.lower().count(w) for w in VOCAB] for t in texts], dtype=np.float32) + 1e-3
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _hit(rank: int, text: str, path: str | None = None) -> Hit:
    return Hit(rank=rank, score=1.0 - rank / 10, chunk_id=f"d{rank}:0", doc_id=f"d{rank}",
               source_path=path or f"d{rank}.md", chunk_index=0, char_start=0, char_end=len(text), text=text)


def test_a_matching_heading_brings_its_whole_list_cited_once() -> None:
    compost = ("# Compost\n\nCompost feeds plants. Ready compost smells of earth.\n\n## What not to compost\n\n"
               "- meat and fish;\n- sick plants\n\n## When compost is ready\n\nReady compost is dark.\n")
    hits = [_hit(1, "Bread is baked in an oven. Coffee is not."), _hit(2, compost)]
    answer = extractive_answer("what not to compost", _embed(["not compost"])[0], hits, _embed)
    assert answer.text == "What not to compost:\n- meat and fish;\n- sick plants [1]"
    # The bread chunk ranked first but gave nothing: only the source used is listed, and it is [1].
    assert [(s.n, s.chunk_id) for s in answer.sources] == [(1, "d2:0")]
    assert answer.cited == [1] and answer.grounded and not answer.unknown_citations


def test_sources_are_numbered_by_first_use_and_the_budget_holds() -> None:
    hits = [_hit(1, "A star is far. Stars shine."), _hit(2, "Bread is baked in an oven. Bread rises."),
            _hit(3, "Bread goes in the oven. A coffee break.")]
    answer = extractive_answer("bread oven", _embed(["bread oven"])[0], hits, _embed, max_chars=80)
    # "Bread rises." is about bread only: further below the best than RELEVANCE_MARGIN, so not quoted.
    assert answer.text == "Bread is baked in an oven. [1]\nBread goes in the oven. [2]"
    assert [s.chunk_id for s in answer.sources] == ["d2:0", "d3:0"]
    small = extractive_answer("bread oven", _embed(["bread oven"])[0], hits, _embed, max_chars=10)
    assert small.text == "Bread is baked in an oven. [1]"  # the best unit goes in even over the budget, alone


def test_check_citations_flags_unknown_numbers() -> None:
    assert check_citations("A [1]. B [3][2]. C [7].", 3) == ([1, 2, 3], [7])
    assert check_citations("no citations", 3) == ([], [])


def test_no_hits_is_an_ungrounded_answer() -> None:
    answer = extractive_answer("q", np.zeros(3, np.float32), [], lambda t: np.zeros((len(t), 3), np.float32))
    assert not answer.grounded and answer.sources == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["# Title", "## Sub", "- item;", "1. step", "| a | b |", "|---|---|", "```", "code",
                                 "Prose. More prose!", "Why? Because.", "Run:", "мясо, рыбу;", "", "  ", "\r"]),
                max_size=30), st.booleans(), st.booleans())
def test_units_of_any_text_are_ordered_spans_whose_bodies_follow_them(lines: list[str], title: bool,
                                                                       html: bool) -> None:
    text = "\n".join(lines)
    units = split_units(text, title=title, lines_are_blocks=html)
    ends = [0]
    for i, u in enumerate(units):
        assert ends[-1] <= u.start <= u.end <= len(text) and u.text.strip()
        assert all(i < j < len(units) for j in u.body) and list(u.body) == sorted(set(u.body))
        ends.append(u.end)


def _random_embed(texts: list[str]) -> np.ndarray:
    """A vector per text, fixed by the text: arbitrary but repeatable scores."""
    rows = [np.random.default_rng(sum(map(ord, t))).normal(size=8) for t in texts]
    m = np.array(rows, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["# Title", "## Sub", "- meat;", "1. Mix flour.", "| a | b |", "```",
                                          "x = 1", "Bread rises. Ovens heat!", "Why? Because.", "Run:", ""]),
                         min_size=1, max_size=12), min_size=1, max_size=5),
       st.integers(min_value=1, max_value=300))
def test_any_answer_cites_exactly_its_sources_numbered_by_first_use(chunks: list[list[str]], budget: int) -> None:
    hits = [_hit(r, "\n".join(lines)) for r, lines in enumerate(chunks, 1)]
    answer = extractive_answer("q", _random_embed(["q"])[0], hits, _random_embed, max_chars=budget)
    first_use = list(dict.fromkeys(int(n) for n in re.findall(r"\[(\d+)\]", answer.text)))
    assert first_use == [s.n for s in answer.sources] == answer.cited == list(range(1, len(first_use) + 1))
    assert not answer.unknown_citations and len({s.chunk_id for s in answer.sources}) == len(answer.sources)
