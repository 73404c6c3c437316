"""Synthetic embeddings with realistic structure, for the index benchmark: deterministic, chunk by chunk.

A low-rank mixture plus noise: 64 domains x 64 topics in a 64-d latent space, each vector a topic centre
plus its own latent offset, mapped to `dim` dimensions by a fixed random orthonormal basis, plus isotropic
noise, then L2-normalised. Uniform random vectors would make every ANN index look broken (no neighbours
are closer than the rest); real sentence embeddings have a low intrinsic dimension, as these do.
"""

from __future__ import annotations

import numpy as np

LATENT = 64
DOMAINS = 64
TOPICS_PER_DOMAIN = 64
DOMAIN_SCALE, TOPIC_SCALE, POINT_SCALE = 1.0, 0.5, 1.0
NOISE = 0.6  # noise energy relative to the latent signal: nearest neighbours at cosine ~0.5, random pairs ~0


class SyntheticEmbeddings:
    def __init__(self, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        domains = DOMAIN_SCALE * rng.standard_normal((DOMAINS, LATENT))
        topics = domains[:, None, :] + TOPIC_SCALE * rng.standard_normal((DOMAINS, TOPICS_PER_DOMAIN, LATENT))
        self.topics = topics.reshape(-1, LATENT).astype(np.float32)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, LATENT)))
        self.basis = basis.T.astype(np.float32)  # (LATENT, dim), orthonormal rows
        self.seed = seed
        # expected squared latent norm ~ LATENT * (1 + .55^2 + .45^2); spread the noise energy to a fraction of it
        self.noise_sd = float(NOISE * np.sqrt(LATENT * (DOMAIN_SCALE**2 + TOPIC_SCALE**2 + POINT_SCALE**2) / dim))
        # topic popularity is skewed, as real corpora are (Zipf-like)
        weights = 1.0 / np.arange(1, len(self.topics) + 1) ** 0.6
        self.topic_p = (weights / weights.sum())[rng.permutation(len(self.topics))]

    def chunk(self, index: int, rows: int, stream: int = 0) -> np.ndarray:
        """Rows of chunk `index` (deterministic for (seed, stream, index)); stream 1 = held-out queries."""
        rng = np.random.default_rng([self.seed, stream, index])
        topic = rng.choice(len(self.topics), size=rows, p=self.topic_p)
        latent = self.topics[topic] + POINT_SCALE * rng.standard_normal((rows, LATENT), dtype=np.float32)
        out = latent @ self.basis
        out += self.noise_sd * rng.standard_normal((rows, self.dim), dtype=np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out
