"""The limits of one API key on a Ray cluster: one named actor holding them, and the proxy each worker embeds through.

The actor hosts the local engine's own LocalLimiter (in-flight slots, pace, tokens per minute), so the cluster
learns from 429s exactly as one process does; the proxy implements pipeline.limiter.Limiter with calls to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError

from ..config import Config
from ..errors import NetworkError
from ..limiter import LimiterState, LocalLimiter, Pace, Slot
from ..records import ModelSpec
from . import NAMESPACE

__all__ = ["LimiterRef", "LimiterSettings", "RemoteLimiter", "key_id", "limiter_for"]

log = logging.getLogger("pipeline.engine_ray")

IDLE_EXIT_S = 600.0  # a limiter no run has used for this long (and holding no slot) ends itself
SWEEP_EVERY_S = 5.0
LEASE_MARGIN_S = 30.0


@dataclass(frozen=True)
class LimiterSettings:
    concurrency: int
    requests_per_minute: float
    tokens_per_minute: float
    # A slot not given back within this is taken back (its holder died unseen): the longest a request may
    # hold one, waiting for a Retry-After ([embedding] max_retry_after_s) and then for its answer (timeout).
    lease_s: float


@dataclass(frozen=True)
class LimiterRef:
    """What a worker needs to find the key's limiter: its name (never the secret) and how to make it anew."""

    name: str
    settings: LimiterSettings

    def handle(self) -> Any:
        """The actor, made if no run has it (detached: every job with this key shares it, and what it learned)."""
        return _LimiterActorClass.options(name=self.name, namespace=NAMESPACE, lifetime="detached",
                                          get_if_exists=True).remote(self.settings)


def key_id(config: Config, spec: ModelSpec, endpoint: str) -> str:
    """A short id of the credential the provider of `spec` uses at `endpoint` (a hash: the secret never shows)."""
    g, o = config.gigachat, config.openai
    secrets = [g.credentials, g.access_token, g.password] if spec.provider == "gigachat" else [o.api_key]
    user = g.user if spec.provider == "gigachat" else ""
    material = "\0".join([spec.provider, endpoint, user, *(s.get() if s else "" for s in secrets)])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def limiter_for(config: Config, spec: ModelSpec, endpoint: str) -> LimiterRef:
    """The limiter of the key this run embeds with; its settings are [embedding]'s (the last run's win)."""
    cfg = config.embedding
    timeout = config.gigachat.timeout_s if spec.provider == "gigachat" else config.openai.timeout_s
    settings = LimiterSettings(cfg.concurrency, cfg.requests_per_minute, cfg.tokens_per_minute,
                               lease_s=cfg.max_retry_after_s + timeout + LEASE_MARGIN_S)
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", endpoint.split("://")[-1]).strip("-")[:60]
    return LimiterRef(f"pipeline-limits-{spec.provider}-{slug}-{key_id(config, spec, endpoint)}", settings)


class _LimiterActor:
    """The key's limits (an async Ray actor): slots by id, so a lost or doubled release is harmless, and by
    holder ("<worker>/<incarnation>"), so a restarted worker gives back what its killed predecessor held or
    was still waiting for (a wait granted later would leak the slot for good)."""

    def __init__(self, settings: LimiterSettings) -> None:
        self.settings = settings
        self.local = LocalLimiter(settings.concurrency, settings.requests_per_minute, settings.tokens_per_minute)
        self.slots: dict[str, tuple[Slot, str, float]] = {}  # slot id -> (slot, holder, lease end)
        self.waiting: dict[str, str] = {}  # slot id -> holder, while its acquire waits
        self.cancelled: set[str] = set()  # released (or their holder gone) before they were granted
        self.last_call = time.monotonic()
        self.sweeper: asyncio.Task[None] | None = None

    def _touch(self) -> None:
        self.last_call = time.monotonic()
        if self.sweeper is None:
            self.sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def configure(self, settings: LimiterSettings) -> None:
        """A run's settings; different ones start the limits afresh (slots held stay with the old ones)."""
        self._touch()
        if settings != self.settings:
            self.settings = settings
            self.local = LocalLimiter(settings.concurrency, settings.requests_per_minute,
                                      settings.tokens_per_minute)

    async def acquire(self, slot_id: str, holder: str, first: bool) -> None:
        self._touch()
        self.waiting[slot_id] = holder
        try:
            slot = await self.local.acquire(first=first)
        finally:
            self.waiting.pop(slot_id, None)
        if slot_id in self.cancelled:  # the caller gave up waiting, or died: never held
            self.cancelled.discard(slot_id)
            slot.release()
            return
        self.slots[slot_id] = (slot, holder, time.monotonic() + self.settings.lease_s)

    async def release(self, slot_id: str) -> None:
        self._touch()
        held = self.slots.pop(slot_id, None)
        if held is None:
            self.cancelled.add(slot_id)
        else:
            held[0].release()

    async def release_holder(self, holder: str) -> int:
        """A worker (re)started as `holder`: what earlier incarnations of it held is given back, what they
        still wait for is never granted. Returns the slots given back."""
        self._touch()
        worker = holder.split("/", 1)[0] + "/"

        def gone(who: str) -> bool:
            return who.startswith(worker) and who != holder

        self.cancelled.update(k for k, who in self.waiting.items() if gone(who))
        held = [k for k, (_, who, _) in self.slots.items() if gone(who)]
        for k in held:
            self.slots.pop(k)[0].release()
        return len(held)

    async def pace(self, tokens: int) -> Pace:
        self._touch()
        return await self.local.pace(tokens)

    async def succeeded(self) -> None:
        self._touch()
        self.local.succeeded()

    async def rate_limited(self, retry_after: float, sent_at: float) -> None:
        self._touch()
        self.local.rate_limited(retry_after, sent_at)

    async def throttled(self) -> None:
        self._touch()
        self.local.throttled()

    async def state(self) -> LimiterState:
        return self.local.snapshot()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            now = time.monotonic()
            for k in [k for k, (_, _, end) in self.slots.items() if end < now]:
                log.warning("limiter: slot %s held past its lease (its worker died?): taken back", k)
                self.slots.pop(k)[0].release()
            if len(self.cancelled) > 10_000:
                self.cancelled.clear()  # releases that raced nothing: a bound, not a correctness matter
            if not self.slots and now - self.last_call > IDLE_EXIT_S:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return


# No CPU of its own: it waits, it does not compute. Restarted if its process dies (what it learned is lost).
_LimiterActorClass = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_LimiterActor)


class _RemoteSlot:
    def __init__(self, limiter: RemoteLimiter, slot_id: str) -> None:
        self._limiter: RemoteLimiter | None = limiter
        self._id = slot_id

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.handle.release.remote(self._id)


class RemoteLimiter:
    """pipeline.limiter.Limiter through the key's actor: every worker of every run with the key shares it.

    Calls that wait (acquire, pace) are bounded by the lease; an actor that died is looked up (or made)
    again once per call. Outcomes (succeeded, rate_limited, throttled, release) are sent without waiting.
    """

    def __init__(self, ref: LimiterRef, holder: str) -> None:
        self.ref = ref
        self.holder = holder
        self.handle = ref.handle()

    async def _call(self, method: str, *args: Any) -> Any:
        for attempt in (1, 2):
            try:
                return await asyncio.wait_for(getattr(self.handle, method).remote(*args), self.ref.settings.lease_s)
            except RayActorError:
                if attempt == 2:
                    raise NetworkError("the cluster's rate limiter is gone", provider="ray", retryable=True) from None
                self.handle = self.ref.handle()
            except TimeoutError:
                raise NetworkError(f"the cluster's rate limiter did not answer {method} in "
                                   f"{self.ref.settings.lease_s:.0f} s", provider="ray", retryable=True) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def release_holder(self) -> int:
        return int(await self._call("release_holder", self.holder))

    async def acquire(self, *, first: bool = False) -> Slot:
        slot_id = uuid.uuid4().hex
        try:
            await self._call("acquire", slot_id, self.holder, first)
        except BaseException:
            self.handle.release.remote(slot_id)  # granted meanwhile or not: never held
            raise
        return _RemoteSlot(self, slot_id)

    async def pace(self, tokens: int) -> Pace:
        return await self._call("pace", tokens)  # type: ignore[no-any-return]

    def succeeded(self) -> None:
        self.handle.succeeded.remote()

    def rate_limited(self, retry_after: float, sent_at: float) -> None:
        self.handle.rate_limited.remote(retry_after, sent_at)

    def throttled(self) -> None:
        self.handle.throttled.remote()

    async def state(self) -> LimiterState:
        return await self._call("state")  # type: ignore[no-any-return]
