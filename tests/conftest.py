"""Shared fixtures: a clean environment per test, a tiny corpus with bad files, configs in tmp dirs, and data/
indexed once per session with the offline default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.config import Config, load_config
from pipeline.records import ModelSpec

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No credentials or pipeline settings leak in from the developer's shell; a private HOME and cache."""
    for key in list(os.environ):
        if key.startswith(("GIGACHAT_", "PIPELINE_")):
            monkeypatch.delenv(key)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    return home


@pytest.fixture
def fake_spec() -> ModelSpec:
    return ModelSpec(name="fake-8", provider="fake", kind="embed", max_input_tokens=64, dimension=8,
                     max_batch_texts=4)


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """Five good documents in four formats, English and Russian, plus a binary, an invalid-UTF-8 and an empty file."""
    root = tmp_path / "corpus"
    (root / "en").mkdir(parents=True)
    (root / "ru").mkdir()
    (root / "en" / "python.md").write_text(
        "# Virtual environments\n\nCreate a virtual environment with `python -m venv .venv`, then activate it "
        "and install packages with pip. Each project keeps its own dependencies.\n\n## Why\n\nIsolation "
        "avoids version conflicts between projects.\n", encoding="utf-8")
    (root / "en" / "space.txt").write_text(
        "A black hole is a region of spacetime where gravity is so strong that nothing, not even light, can "
        "escape. It forms when a massive star collapses.\n", encoding="utf-8")
    (root / "ru" / "hleb.md").write_text(
        "# Хлеб на закваске\n\nЗакваску кормят мукой и водой каждый день. Тесто для хлеба замешивают, дают ему "
        "подняться в тепле, затем выпекают в горячей духовке при 230 градусах.\n", encoding="utf-8")
    (root / "ru" / "metro.html").write_text(
        "<html><head><title>Метро</title><style>p{color:red}</style></head><body><h1>Московское метро</h1>"
        "<p>Московский метрополитен открылся в 1935 году. Станции &laquo;Комсомольская&raquo; и "
        "&laquo;Маяковская&raquo; известны своей архитектурой.</p><script>var x = 'не текст';</script>"
        "</body></html>", encoding="utf-8")
    (root / "faq.jsonl").write_text(
        '{"id": "coffee-1", "text": "Espresso is brewed by forcing hot water through finely ground coffee.", '
        '"metadata": {"lang": "en", "topic": "coffee"}}\n', encoding="utf-8")
    (root / "blob.bin.txt").write_bytes(b"\x00\x01\x02binary\x00data" * 10)
    (root / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (root / "empty.md").write_text("   \n", encoding="utf-8")
    return root


@pytest.fixture
def config_for(tmp_path: Path):
    def make(corpus: Path | None = None, **overrides: object) -> Config:
        return load_config(None, corpus=corpus, out_dir=tmp_path / "out", **overrides)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def data_index(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """The output directory of data/ embedded and indexed with e5-small-local (offline); once per session.

    Its environment is explicit (no credentials, a private HOME), so it is built alike whichever test asks
    first. Its vectors are cached in pytest's cache directory (.pytest_cache), not the session's tmp: the
    embedding (1-4 min on 2 cores) is paid once per checkout, later sessions only chunk, look up and index.
    Read-only for its users: they search and ask, never embed into it.
    """
    from pipeline import api

    root = tmp_path_factory.mktemp("data-index")
    store = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    cache = store.mkdir("pipeline-vectors") if store is not None else root / "cache"
    env = {"HOME": str(root), "PATH": os.environ.get("PATH", ""), "PIPELINE_CACHE_DIR": str(cache)}
    out = root / "out"
    api.embed(load_config(None, env, model="e5-small-local", corpus=DATA, out_dir=out))
    return out
