"""Shared fixtures: a clean environment per test, a recording fake provider, a tiny corpus with bad files."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import Config, load_config
from pipeline.errors import ProviderError
from pipeline.records import ModelSpec


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No credentials or pipeline settings leak in from the developer's shell; a private HOME and cache."""
    import os

    for key in list(os.environ):
        if key.startswith(("GIGACHAT_", "PIPELINE_")):
            monkeypatch.delenv(key)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    return home


class FakeProvider:
    """An EmbeddingProvider with deterministic vectors that records every batch and can fail on cue."""

    name = "fake"

    def __init__(self, spec: ModelSpec, *, fail_times: int = 0, error: type[ProviderError] | None = None,
                 fail_text: str | None = None) -> None:
        self.spec = spec
        self.batches: list[list[str]] = []
        self.fail_times = fail_times
        self.error = error
        self.fail_text = fail_text

    @staticmethod
    def vector_for(text: str, dim: int) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).normal(size=dim).astype(np.float32) * 7

    async def embed_batch(self, texts: Sequence[str], *, is_query: bool = False) -> np.ndarray:
        self.batches.append(list(texts))
        if self.fail_text is not None and any(self.fail_text in t for t in texts):
            raise (self.error or ProviderError)("always fails", provider="fake", endpoint="embeddings")
        if self.fail_times > 0:
            self.fail_times -= 1
            raise (self.error or ProviderError)("injected", provider="fake", endpoint="embeddings")
        return np.stack([self.vector_for(t, self.spec.dimension) for t in texts])

    async def aclose(self) -> None:
        return None


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
