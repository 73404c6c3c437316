"""`pip install .` gives a working `pipeline` command: the wheel carries the model registry, and the command runs
from any directory, offline. Built without network (--no-build-isolation) and installed into a fresh venv whose
dependencies come from this project's venv (a .pth line), so the `pipeline` package itself is the wheel's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(240)]


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=180)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh venv with the wheel of this source tree installed."""
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"  # a copy, so the build's build/ and *.egg-info never land in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "pipeline", src / "pipeline", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "configs", src / "configs", symlinks=True, ignore=ignore)
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", base / "dist", src)
    (wheel,) = (base / "dist").glob("pipeline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert b"[models.e5-small-local]" in archive.read("pipeline/models.toml")

    venv = base / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    purelib = Path(_run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                   .stdout.strip())
    # Dependencies from this venv; a plain path line, so the editable install's own .pth there is not run.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "project-deps.pth").write_text("\n".join(sorted(deps)) + "\n", encoding="utf-8")
    _run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--quiet", "--no-deps",
         "--no-index", wheel)
    return venv / "bin"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_the_installed_package_is_the_wheel_not_the_source_tree(installed: Path, tmp_path: Path) -> None:
    where = _run(installed / "python", "-c", "import pipeline; print(pipeline.__file__)", cwd=tmp_path,
                 env=_env(tmp_path)).stdout.strip()
    assert Path(where).is_relative_to(installed.parent), where


def test_pipeline_models_works_from_another_directory(installed: Path, tmp_path: Path) -> None:
    rows = json.loads(_run(installed / "pipeline", "models", "--json", cwd=tmp_path, env=_env(tmp_path)).stdout)
    assert {"e5-small-local", "Embeddings", "GigaChat-2-Max"} <= {r["name"] for r in rows}


def test_an_offline_embed_and_search_from_another_directory(installed: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "bread.md").write_text("# Bread\n\nSourdough bread rises slowly and is baked in a hot oven.\n",
                                     encoding="utf-8")
    (corpus / "space.txt").write_text("A black hole is a region where gravity stops even light.\n",
                                      encoding="utf-8")
    env = _env(tmp_path)
    result = _run(installed / "pipeline", "embed", "docs", "--no-progress", "--json", cwd=tmp_path, env=env)
    report = json.loads(result.stdout)
    assert report["documents"] == 2 and report["model"] == "e5-small-local"
    assert (tmp_path / "out").is_dir()  # the default out_dir, relative to where it ran
    hits = json.loads(_run(installed / "pipeline", "search", "black hole", "-k", "1", "--json", cwd=tmp_path,
                           env=env).stdout)
    assert hits["hits"][0]["source_path"] == "space.txt"
