"""`pipeline ask` as a user meets it, in a real process against the emulator: the streamed answer, then
"Sources:", warnings on stderr, and failures as one `error:` line with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_answer_chat import build_index

from pipeline.emulator import EmulatorProfile, start_emulator


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    return build_index(tmp_path_factory.mktemp("ask-cli"))


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with start_emulator(EmulatorProfile(stream_break_after=None)) as running:
        yield running


def run(out: Path, env: dict[str, str], emu: Any, *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
            "GIGACHAT_CREDENTIALS": emu.credentials}
    return subprocess.run([sys.executable, "-m", "pipeline", "ask", *args, "--out", str(out)], capture_output=True,
                          text=True, env=full, timeout=120)


def test_streamed_answer_then_sources(indexed: tuple[Path, dict[str, str]], emu: Any) -> None:
    result = run(*indexed, emu, "What is a black hole? Also search for «espresso shot»", "-k", "1",
                 "--chat-model", "GigaChat-2-Pro")
    assert result.returncode == 0, result.stderr
    answer, sources = result.stdout.split("\nSources:\n")
    assert "Espresso" in answer and "[2]" in answer
    lines = sources.rstrip().splitlines()
    assert lines[0].startswith(" [1] space.txt chars 0-") and lines[1].startswith("*[2] coffee.md chars 0-")
    assert "[searching the corpus: espresso shot]" in result.stderr


def test_json_is_the_structured_answer(indexed: tuple[Path, dict[str, str]], emu: Any) -> None:
    result = run(*indexed, emu, "Repeat exactly «black holes trap even light [1]»", "-k", "2", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mode"] == "structured" and data["grounded"] and data["cited"] == [1]
    citation = data["citations"][0]
    assert set(citation) == {"n", "chunk_id", "source_path", "char_start", "char_end"}
    assert citation["chunk_id"] == data["sources"][0]["chunk_id"]


@pytest.mark.parametrize(("question", "extra", "needle"), [
    ("Tell me about BLACKLISTED_TOPIC", (), "refused to answer"),
    ("What is a black hole?", ("--chat-model", "GigaChat-9"), "--chat-model: unknown model 'GigaChat-9'"),
])
def test_failures_are_one_line(indexed: tuple[Path, dict[str, str]], emu: Any, question: str,
                               extra: tuple[str, ...], needle: str) -> None:
    result = run(*indexed, emu, question, "-k", "1", *extra)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr


def test_stream_broken_midway_prints_what_arrived_then_fails(indexed: tuple[Path, dict[str, str]]) -> None:
    with start_emulator(EmulatorProfile(stream_break_after=2)) as broken:
        result = run(*indexed, broken, "What is a black hole?", "-k", "1")
    assert result.returncode == 1
    assert result.stdout.strip() and "Sources:" not in result.stdout  # the partial answer, on its own line
    assert result.stdout.endswith("\n")
    (error,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert error.startswith("error: ") and "stream broke after" in error and "incomplete" in error
