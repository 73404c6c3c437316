"""--engine and [engine]: a bad value, a setting the Ray engine cannot run, or no Ray installed is one error line
and exit 2, before anything is read or sent; these need no Ray (tests/cluster runs the engine itself)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize(("args", "line"), [
    (["--engine", "spark"], "error: --engine: expected local or ray, got 'spark'"),
    (["--engine", "ray", "--ray-workers", "two"],
     "error: --ray-workers: expected a number of workers (0: one per CPU), got 'two'"),
    (["--engine", "ray", "--exact-tokens"],
     "error: --exact-tokens: not with --engine ray (every chunking task would ask the service for counts "
     "outside the key's shared rate limit); use --engine local"),
])
def test_bad_engine_options_are_one_line(tiny_corpus: Path, tmp_path: Path, args: list[str], line: str) -> None:
    result = _cli("embed", str(tiny_corpus), "--out", str(tmp_path / "out"), "--no-progress", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "out").exists()


def test_a_bad_engine_in_the_config_names_the_file_and_key(tiny_corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[engine]\nname = "spark"\n', encoding="utf-8")
    result = _cli("embed", str(tiny_corpus), "--config", str(config), "--no-progress")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: [engine] name: expected one of 'local', 'ray', got 'spark' (str)"]


def test_engine_ray_without_the_ray_extra(tiny_corpus: Path, tmp_path: Path) -> None:
    """As on an install without pipeline[ray]: `import ray` fails (a stand-in package first on the path)."""
    stub = tmp_path / "no-ray" / "ray"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("No module named \'ray\'")\n', encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(stub.parent), os.environ.get("PYTHONPATH")]))
    result = _cli("embed", str(tiny_corpus), "--out", str(tmp_path / "out"), "--engine", "ray", "--no-progress",
                  env={"PYTHONPATH": path})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --engine ray needs the ray extra: pip install 'pipeline[ray]'"]
    assert not (tmp_path / "out").exists()
