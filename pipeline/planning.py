"""Planning: what an embed run would send, and how long it should take under the configured limits.

Pure: counts and settings in, an EmbedPlan out; reads no corpus, no cache, calls no provider.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .config import EmbeddingConfig
from .embedding import EmbedItem, plan_batches
from .records import ModelSpec

__all__ = ["ASSUMED_LATENCY_MS", "ASSUMED_LATENCY_PER_TEXT_MS", "EmbedPlan", "Estimate", "estimate_time",
           "make_plan"]

# A guess at one embeddings call, used when the caller gives none: the latency our benchmark emulates
# (bench/embed.md); GigaChat publishes no figure.
ASSUMED_LATENCY_MS = 150.0
ASSUMED_LATENCY_PER_TEXT_MS = 2.0


@dataclass(frozen=True)
class Estimate:
    """How long `requests` calls take under the client-side limits, and which limit decides."""

    seconds: float
    requests_per_s: float
    binding: str  # "in-flight limit", "requests_per_minute" or "tokens_per_minute"


def estimate_time(requests: int, tokens: int, *, concurrency: int, latency_s: float,
                  requests_per_minute: float = 0.0, tokens_per_minute: float = 0.0) -> Estimate:
    """Steady state: requests start at the slowest of the limits' rates; the last one adds its latency."""
    if requests <= 0:
        return Estimate(0.0, 0.0, "nothing to send")
    rates = {"in-flight limit": concurrency / max(latency_s, 1e-6)}
    if requests_per_minute > 0:
        rates["requests_per_minute"] = requests_per_minute / 60
    if tokens_per_minute > 0 and tokens > 0:
        rates["tokens_per_minute"] = tokens_per_minute / 60 / (tokens / requests)
    binding = min(rates, key=lambda k: rates[k])
    rate = rates[binding]
    if binding == "in-flight limit":  # waves of `concurrency` requests, one latency each
        return Estimate(math.ceil(requests / concurrency) * latency_s, rate, binding)
    return Estimate((requests - 1) / rate + latency_s, rate, binding)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


@dataclass
class EmbedPlan:
    """What `embed` would do: chunks, cache hits, texts and tokens to send, requests, expected time."""

    corpus: str
    model: str
    documents: int = 0
    documents_to_chunk: int = 0  # new or changed since the live snapshot
    chunks: int = 0  # of those documents
    cache_hits: int = 0  # chunks whose vector the cache already holds
    texts_to_send: int = 0  # distinct texts not cached
    tokens: int = 0  # of the texts to send, as our counter bounds them
    requests: int = 0
    texts_per_request: int = 0
    concurrency: int = 0
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0
    latency_ms: float = 0.0  # per request, assumed
    expected_seconds: float = 0.0
    binding: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        limits = [f"{self.concurrency} in flight"]
        limits += [f"{self.requests_per_minute:g} requests/min"] if self.requests_per_minute else []
        limits += [f"{self.tokens_per_minute:g} tokens/min"] if self.tokens_per_minute else []
        lines = [
            f"{self.documents} documents ({self.documents_to_chunk} new or changed), {self.chunks} chunks, "
            f"{self.cache_hits} cache hits",
            f"to send: {self.texts_to_send} texts, {self.tokens} tokens, {self.requests} "
            f"request{'s' * (self.requests != 1)} of up to "
            f"{self.texts_per_request} texts ({self.model})",
            f"expected: {_duration(self.expected_seconds)} under {', '.join(limits)}; {self.binding} binds",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def make_plan(plan: EmbedPlan, to_send: Sequence[EmbedItem], spec: ModelSpec, cfg: EmbeddingConfig,
              latency_ms: float | None = None) -> EmbedPlan:
    """Fill `plan` with the requests `to_send` makes and their time; latency_ms None assumes the default guess."""
    per_request = cfg.batch_size or spec.max_batch_texts
    batches = plan_batches(to_send, per_request, spec.max_batch_tokens)
    plan.texts_to_send = len(to_send)
    plan.tokens = sum(item.tokens for item in to_send)
    plan.requests = len(batches)
    plan.texts_per_request = per_request
    plan.concurrency = min(cfg.concurrency, spec.max_concurrency) if spec.max_concurrency else cfg.concurrency
    plan.requests_per_minute, plan.tokens_per_minute = cfg.requests_per_minute, cfg.tokens_per_minute
    if latency_ms is None:
        mean_texts = len(to_send) / len(batches) if batches else 0.0
        latency_ms = ASSUMED_LATENCY_MS + ASSUMED_LATENCY_PER_TEXT_MS * mean_texts
        plan.notes.append(f"assumed {latency_ms:.0f} ms per request ({ASSUMED_LATENCY_MS:g} ms + "
                          f"{ASSUMED_LATENCY_PER_TEXT_MS:g} ms per text, a guess); --latency-ms sets it")
    plan.latency_ms = latency_ms
    est = estimate_time(plan.requests, plan.tokens, concurrency=plan.concurrency, latency_s=latency_ms / 1000,
                        requests_per_minute=cfg.requests_per_minute, tokens_per_minute=cfg.tokens_per_minute)
    plan.expected_seconds, plan.binding = est.seconds, est.binding
    if not cfg.requests_per_minute and plan.requests:
        plan.notes.append("no requests_per_minute is configured: a server rate limit, if lower, binds instead "
                          "(the embedder learns it from 429s)")
    return plan
