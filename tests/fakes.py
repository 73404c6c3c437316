"""Test doubles that implement the project's own protocols (never httpx): a recording fake provider."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.errors import ProviderError
from pipeline.records import ModelSpec


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

    async def embed_batch(self, texts: Sequence[str], *, is_query: bool = False,
                          on_received: Callable[[], None] | None = None) -> np.ndarray:
        self.batches.append(list(texts))
        if self.fail_text is not None and any(self.fail_text in t for t in texts):
            raise (self.error or ProviderError)("always fails", provider="fake", endpoint="embeddings")
        if self.fail_times > 0:
            self.fail_times -= 1
            raise (self.error or ProviderError)("injected", provider="fake", endpoint="embeddings")
        return np.stack([self.vector_for(t, self.spec.dimension) for t in texts])

    async def aclose(self) -> None:
        return None
