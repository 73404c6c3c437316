"""Retry: the bounded retry policy of one-off provider calls (a query's embedding, a chat turn, a vision call).

Sync and async share one policy (tenacity underneath); the batch embedder schedules its own retries (embedding.py).
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception

from ..errors import ProviderError, RateLimitError, RetryAfterTooLongError

if TYPE_CHECKING:
    from ..config import Config
    from .chat import ChatDelta, ChatModel, ChatReply

__all__ = ["DEFAULT_MAX_RETRY_AFTER_S", "RetryPolicy", "RetryingChatModel", "explain_retry_after",
           "usable_retry_after"]

T = TypeVar("T")
DEFAULT_MAX_RETRY_AFTER_S = 300.0  # a Retry-After beyond this is not waited for: the call fails (retryable)


def usable_retry_after(retry_after: float | None, cap_s: float) -> float | None:
    """The wait a server asked for, if it is one to honour: finite, and at most `cap_s` seconds."""
    if retry_after is None or not math.isfinite(retry_after) or retry_after > cap_s:
        return None
    return max(0.0, retry_after)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts, backoff and a deadline for one call; retries only errors marked retryable.

    A 429's Retry-After is honoured up to max_retry_after_s; beyond it the call fails at once with a
    RateLimitError that says why, since waiting a day holds the output lock and the scheduler's slot.
    A 429 that says when to come back is not a failed attempt: callers sharing a key would otherwise spend
    their attempts colliding; the deadline (and max_rate_limited_waits) bounds those waits instead.
    """

    max_attempts: int = 4
    initial_wait_s: float = 0.25
    max_wait_s: float = 8.0
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    deadline_s: float | None = 120.0  # the whole call, retries included; None: attempts alone bound it
    max_rate_limited_waits: int = 32  # 429s with a usable Retry-After waited out, at most

    @classmethod
    def for_config(cls, config: Config) -> RetryPolicy:
        """The policy with the config's Retry-After cap ([embedding] max_retry_after_s)."""
        return cls(max_retry_after_s=config.embedding.max_retry_after_s)

    def call(self, fn: Callable[[], T]) -> T:
        """fn(), retried under this policy; raises its last error."""
        try:
            for attempt in Retrying(**self._tenacity()):
                with attempt:
                    return fn()
        except RateLimitError as e:
            raise explain_retry_after(e, self.max_retry_after_s) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(self, fn: Callable[[], Awaitable[T]]) -> T:
        """await fn(), retried under this policy; raises its last error."""
        try:
            async for attempt in AsyncRetrying(**self._tenacity()):
                with attempt:
                    return await fn()
        except RateLimitError as e:
            raise explain_retry_after(e, self.max_retry_after_s) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _tenacity(self) -> dict[str, object]:
        failed = [0, 0]  # this call's failed attempts: other errors, 429s with a usable Retry-After

        def stop(state: RetryCallState) -> bool:
            failed[self._asked(state) is not None] += 1
            return self._stop(state, failed[0], failed[1])

        return {"stop": stop, "wait": self._wait, "retry": retry_if_exception(self._retryable), "reraise": True}

    def _retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, ProviderError) or not exc.retryable:
            return False
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            return usable_retry_after(exc.retry_after, self.max_retry_after_s) is not None
        return True

    def _stop(self, state: RetryCallState, failures: int, rate_limited: int) -> bool:
        if failures >= self.max_attempts or rate_limited > self.max_rate_limited_waits:
            return True
        return self.deadline_s is not None and \
            (state.seconds_since_start or 0.0) + self._longest_wait(state) > self.deadline_s

    def _wait(self, state: RetryCallState) -> float:
        asked = self._asked(state)
        if asked is not None:  # a little past it, spread: callers told the same time must not all come back at once
            return asked + random.uniform(0.0, min(1.0, max(asked, 0.05)))
        return self._longest_wait(state) * random.uniform(0.5, 1.0)

    def _longest_wait(self, state: RetryCallState) -> float:
        asked = self._asked(state)
        if asked is not None:
            return asked + min(1.0, max(asked, 0.05))
        return min(self.max_wait_s, self.initial_wait_s * 2.0 ** (state.attempt_number - 1))

    def _asked(self, state: RetryCallState) -> float | None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitError):
            return usable_retry_after(exc.retry_after, self.max_retry_after_s)
        return None


def explain_retry_after(e: RateLimitError, cap_s: float) -> RateLimitError:
    """`e`, or when its Retry-After is not one to honour, a RetryAfterTooLongError saying why."""
    if e.retry_after is None or usable_retry_after(e.retry_after, cap_s) is not None:
        return e
    why = f"the server asked to wait {e.retry_after:g} s, over the {cap_s:g} s cap (max_retry_after_s)"
    return RetryAfterTooLongError(f"{e.server_message}; {why}", provider=e.provider, endpoint=e.endpoint,
                                  status=e.status, retry_after=e.retry_after)


class RetryingChatModel:
    """A ChatModel whose complete calls (chat, structured, describe_image) are retried under a policy."""

    def __init__(self, inner: ChatModel, policy: RetryPolicy) -> None:
        self.inner, self.policy, self.model = inner, policy, inner.model

    def chat(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> ChatReply:
        return self.policy.call(lambda: self.inner.chat(messages, **opts))

    def structured(self, messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any], name: str,
                   **opts: Any) -> tuple[dict[str, Any] | None, ChatReply]:
        return self.policy.call(lambda: self.inner.structured(messages, schema, name, **opts))

    def describe_image(self, prompt: str, path: Path) -> ChatReply:
        return self.policy.call(lambda: self.inner.describe_image(prompt, path))

    def stream(self, messages: Sequence[Mapping[str, Any]], **opts: Any) -> Iterator[ChatDelta]:
        # Not retried here: whoever shows the pieces decides (the answer loop retries a stream that fails
        # before its first text once, and reports one cut after text as incomplete).
        return self.inner.stream(messages, **opts)

    def close(self) -> None:
        self.inner.close()
