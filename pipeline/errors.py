"""Errors: the one exception tree every stage raises, and the CLI maps to exit codes.

Pure definitions; no I/O. Messages never contain credentials or tokens.

    PipelineError
    ├── ConfigError            bad config file, option or environment value
    ├── SourceError            corpus path missing or unreadable as a whole
    │   └── ShrinkRefusedError the corpus lost too many documents (or all): not published
    ├── StoreError             Parquet vectors missing, corrupt or inconsistent
    ├── IndexBuildError        index cannot be built (e.g. over the memory budget)
    ├── ModelMismatchError     index and query model/fingerprint differ
    ├── LockHeldError          another run holds the output directory's lock
    ├── DeadlineError          the command ran past its --deadline
    └── ProviderError          an API call failed (provider, endpoint, status, retryable)
        ├── AuthError          401/403, or OAuth refused the credentials
        ├── RateLimitError     429 (retry_after seconds, when the server gave one)
        │   └── RetryAfterTooLongError  it asked for a wait over the cap (or inf): not waited for
        ├── RequestTooLargeError 413 (or 422 for over-long input)
        ├── BadRequestError    400/404/422: the request itself is wrong
        ├── ServerError        5xx
        ├── NetworkError       timeouts, refused or dropped connections
        ├── BadResponseError   a 2xx body that is not what the protocol promises
        └── ContentRefusedError the model refused (finish_reason blacklist)
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BadRequestError",
    "BadResponseError",
    "ConfigError",
    "ContentRefusedError",
    "DeadlineError",
    "IndexBuildError",
    "LockHeldError",
    "ModelMismatchError",
    "NetworkError",
    "PipelineError",
    "ProviderError",
    "RateLimitError",
    "RequestTooLargeError",
    "RetryAfterTooLongError",
    "ServerError",
    "ShrinkRefusedError",
    "SourceError",
    "StoreError",
]


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code: int = 1


class ConfigError(PipelineError):
    exit_code = 2


class SourceError(PipelineError):
    exit_code = 2


class ShrinkRefusedError(SourceError):
    """An unmounted share or a wrong path looks like a corpus that lost its documents: refused, not published."""


class StoreError(PipelineError):
    pass


class IndexBuildError(PipelineError):
    pass


class ModelMismatchError(PipelineError):
    exit_code = 2


class LockHeldError(PipelineError):
    exit_code = 75  # EX_TEMPFAIL: a scheduler may simply try again later


class DeadlineError(PipelineError):
    exit_code = 124  # as timeout(1): the command was stopped, nothing half-done was published


class ProviderError(PipelineError):
    """An API call failed; says which provider, endpoint and status, and if a retry may help."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        endpoint: str = "",
        status: int | None = None,
        retryable: bool | None = None,
    ) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.status = status
        if retryable is not None:
            self.retryable = retryable
        parts = [p for p in (provider, endpoint) if p]
        where = " ".join(parts)
        head = f"{where}: " if where else ""
        code = f"HTTP {status}: " if status is not None else ""
        super().__init__(f"{head}{code}{message}")
        self.server_message = message


class AuthError(ProviderError):
    pass


class RateLimitError(ProviderError):
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class RetryAfterTooLongError(RateLimitError):
    """Still retryable (a later run may get in), but not within this command: waiting would hold its lock."""


class RequestTooLargeError(ProviderError):
    pass


class BadRequestError(ProviderError):
    pass


class ServerError(ProviderError):
    retryable = True


class NetworkError(ProviderError):
    retryable = True


class BadResponseError(ProviderError):
    retryable = True


class ContentRefusedError(ProviderError):
    pass
