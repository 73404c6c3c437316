"""The answer check: questions a new user asks of data/, answered offline by `pipeline ask` (the extractive
answer over the local model), each required to contain its phrase and to cite exactly the sources it lists.

The questions and phrases are tests/answer/answer_check.toml; data/ is embedded once per session (conftest).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.answer.extractive import DEFAULT_MAX_CHARS
from pipeline.cli import cli
from pipeline.sources import html_to_text

# The first test to run embeds data/ (conftest.data_index): ~1 min on 2 quiet cores, 4-5 on a machine shared
# with other jobs, past the suite's 300 s guard against hangs.
pytestmark = pytest.mark.timeout(900)

DATA = Path(__file__).resolve().parents[2] / "data"
QUESTIONS: list[dict[str, Any]] = tomllib.loads(
    Path(__file__).with_name("answer_check.toml").read_text(encoding="utf-8"))["question"]


def _ask(out: Path, question: str, *extra: str) -> str:
    result = CliRunner().invoke(cli, ["ask", question, "--out", str(out), "--chat-model", "none", *extra],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_check_is_a_dozen_questions_in_both_languages_with_phrases_from_data() -> None:
    assert len(QUESTIONS) >= 12
    russian = sum(bool(re.search("[а-яё]", q["q"], re.IGNORECASE)) for q in QUESTIONS)
    assert abs(2 * russian - len(QUESTIONS)) <= 2  # about half and half
    corpus = []
    for path in DATA.rglob("*.*"):
        text = path.read_text(encoding="utf-8")
        corpus.append((html_to_text(text)[0] if path.suffix == ".html" else text).lower())
    for q in QUESTIONS:  # a phrase no file of data/ contains could never be answered
        assert any(p.lower() in text for p in q["expect"] for text in corpus), q


@pytest.mark.parametrize("item", QUESTIONS, ids=[q["q"] for q in QUESTIONS])
def test_answer_contains_what_was_asked(data_index: Path, item: dict[str, Any]) -> None:
    report = json.loads(_ask(data_index, item["q"], "--json"))
    text = report["text"]
    assert report["mode"] == "extractive" and report["grounded"]
    assert any(p.lower() in text.lower() for p in item["expect"]), text
    # Only the sources used are listed, numbered in the order the answer first cites them.
    first_use = list(dict.fromkeys(int(n) for n in re.findall(r"\[(\d+)\]", text)))
    assert first_use == [s["n"] for s in report["sources"]] == report["cited"] == list(range(1, len(first_use) + 1))
    assert not report["unknown_citations"]
    assert len(text) <= DEFAULT_MAX_CHARS


def test_the_readme_compost_question_answers_with_the_list(data_index: Path) -> None:
    output = _ask(data_index, "что нельзя класть в компост?")
    answer, sources = output.split("\nSources:\n")
    lines = answer.strip().splitlines()
    assert lines[0] == "Что нельзя класть в компост:"  # the heading that matched, then its section's list
    assert lines[1].startswith("- мясо, рыбу, кости") and lines[-1].endswith("химикатами. [1]")
    assert len(lines) == 6
    assert sources.strip().startswith("*[1] mixed/kompostirovanie-doma.html chars ")
