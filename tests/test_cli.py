"""The CLI as users and scripts meet it: real processes, exit codes, one-line errors, --json shapes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=240)


def test_help_lists_the_contract_commands() -> None:
    out = run("--help").stdout
    for command in ("embed", "index", "search", "ask", "models", "chunk"):
        assert command in out


def test_models_table_and_json() -> None:
    table = run("models").stdout
    assert "EmbeddingsGigaR" in table and "2560" in table and "e5-small-local" in table
    rows = json.loads(run("models", "--json").stdout)
    assert {r["name"] for r in rows} >= {"Embeddings", "Embeddings-2", "GigaChat-2-Max"}


@pytest.mark.parametrize(("args", "needle", "code"), [
    (("embed", "/no/such/corpus", "--no-progress"), "/no/such/corpus", 2),
    (("embed", "--config", "/no/such.toml"), "/no/such.toml", 2),
    (("embed", ".", "--model", "Nope"), "--model", 2),
    (("index", "--memory-budget", "many"), "--memory-budget", 2),
])
def test_bad_input_is_one_clear_line_and_nonzero_exit(tmp_path: Path, args: tuple, needle: str, code: int) -> None:
    result = run(*args, "--out", str(tmp_path / "out")) if args[0] != "index" else run(*args, "--out", str(tmp_path))
    assert result.returncode == code
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr


def test_search_before_embed_says_what_to_do(tmp_path: Path) -> None:
    result = run("search", "hello", "--out", str(tmp_path / "empty"))
    assert result.returncode != 0 and "pipeline embed" in result.stderr


def test_embed_then_search_json_and_chunk(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("embed", str(tiny_corpus), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "5 documents" in summary and "3 skipped" in summary and "chunks/s" in summary
    assert "skipped (binary)" in result.stderr

    hits = json.loads(run("search", "virtual environment", "-k", "2", "--json", "--out", str(out)).stdout)
    assert hits["model"] == "e5-small-local" and len(hits["hits"]) == 2
    assert hits["hits"][0]["source_path"] == "en/python.md"

    answer = json.loads(run("ask", "Когда открылось московское метро?", "--json", "--out", str(out)).stdout)
    assert answer["grounded"] and answer["sources"]

    lines = run("chunk", str(tiny_corpus / "en"), "--json").stdout.splitlines()
    first = json.loads(lines[0])
    assert {"text", "char_start", "char_end", "token_count"} <= set(first)


def test_lock_held_exits_with_its_own_code(tiny_corpus: Path, tmp_path: Path) -> None:
    from filelock import FileLock

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(out / ".lock"):
        result = run("embed", str(tiny_corpus), "--out", str(out), "--no-progress")
    assert result.returncode == 75 and "lock" in result.stderr


def test_the_cli_starts_without_the_heavy_stages() -> None:
    # Each command imports its own stages: `embed` fetches its token and loads its tokenizer before numpy and
    # pyarrow load, and --help answers at once. An import at the top of cli.py would undo both.
    probe = ("import sys, pipeline.cli; "
             "print(sorted(m for m in ('numpy', 'pyarrow', 'faiss', 'httpx', 'pipeline.api') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
