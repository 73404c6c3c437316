"""`--deadline`: every command can be bounded in time; a run stopped by it publishes nothing and frees its lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.emulator import EmulatorProfile, start_emulator
from pipeline.store import current_snapshot


def _embed(corpus: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", "embed", str(corpus), "--out", str(out),
                           "--model", "Embeddings", "--no-progress", *extra],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_hanging_server_is_cut_by_the_deadline(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("A short document about rivers and cities.\n", encoding="utf-8")
    out = tmp_path / "out"
    # Every call takes 20 s: without a deadline this run would take minutes of retries.
    with start_emulator(EmulatorProfile(base_latency_ms=20_000)) as emu:
        env = {**os.environ, "GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
               "GIGACHAT_CREDENTIALS": emu.credentials, "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
        started = time.monotonic()
        result = _embed(corpus, out, env, "--deadline", "1.5")
        took = time.monotonic() - started
    assert result.returncode == 124, result.stderr
    assert "--deadline" in result.stderr and "Traceback" not in result.stderr
    assert took < 15
    assert current_snapshot(out) is None  # nothing half-built was published
    # The lock was released: the next run gets past it (and is stopped by its own deadline, not exit 75).
    with start_emulator(EmulatorProfile()) as emu:
        env |= {"GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url}
        again = _embed(corpus, out, env, "--deadline", "60")
    assert again.returncode == 0, again.stderr
    assert current_snapshot(out) is not None


def test_deadline_is_on_every_command() -> None:
    for command in ("embed", "reindex", "index", "search", "ask", "eval", "models"):
        help_text = subprocess.run([sys.executable, "-m", "pipeline", command, "--help"], capture_output=True,
                                   text=True, timeout=60).stdout
        assert "--deadline" in help_text, command
