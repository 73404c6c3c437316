"""Emulator profile: the knobs that shape the emulator's load behaviour and credentials.

A frozen value object only; the CLI options and the subprocess arguments are derived from its fields.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # an upload is at most 15 MB (§8); embeddings bodies are far smaller
DEFAULT_CREDENTIALS = base64.b64encode(b"emulator-client:emulator-secret").decode("ascii")


def _help(text: str) -> dict[str, str]:
    """Field metadata whose help text becomes the --help of the CLI option of the same name."""
    return {"help": text}


@dataclass(frozen=True)
class EmulatorProfile:
    """Load-shaping knobs and accepted credentials of one emulator instance.

    Latency is the time from a request's arrival to its answer, the emulator's own compute included: an
    embeddings call of n texts answers base_latency_ms + jitter + per_text_latency_ms * n after it arrived,
    its vectors computed within the per-text part (later only if computing them takes longer than that part).
    Every call waits base + jitter first (injected 500s come after it). The limits (max_concurrency, rps)
    and error_rate shape the API host only: the OAuth endpoint stands for GigaChat's separate OAuth host,
    so token requests take no concurrency slot or rate-limit token and never get an injected 500; they
    still wait base + jitter, and are counted in the stats (requests, status_counts, by_path; not in_flight).
    """

    base_latency_ms: float = field(
        default=0.0, metadata=_help("Latency of every call under /api/ (OAuth included), in ms.")
    )
    latency_jitter_ms: float = field(
        default=0.0, metadata=_help("Extra seeded random latency, uniform in [0, N] ms, on every call.")
    )
    per_text_latency_ms: float = field(
        default=0.0,
        metadata=_help(
            "Extra latency per input text of an embeddings call, in ms; the vectors are computed within"
            " it, not on top."
        ),
    )
    max_concurrency: int = field(
        default=0,
        metadata=_help(
            "Concurrent API calls allowed; beyond it 429 at once (0 = unlimited). OAuth is exempt."
        ),
    )
    rps: float = field(
        default=0.0,
        metadata=_help(
            "API calls per second (token bucket); beyond it 429 + Retry-After (0 = off). OAuth is exempt."
        ),
    )
    retry_after: str = field(
        default="",
        metadata=_help(
            "Retry-After sent with the rate limit's 429s instead of the bucket's wait, as given "
            "(e.g. 'inf', '86400', an HTTP date): a hostile or broken server."
        ),
    )
    error_rate: float = field(
        default=0.0,
        metadata=_help("Seeded fraction of REST calls answered 500 (never OAuth nor POST /token)."),
    )
    drop_rate: float = field(
        default=0.0,
        metadata=_help("Seeded fraction of embeddings calls whose connection is cut mid-response."),
    )
    wrong_count_rate: float = field(
        default=0.0, metadata=_help("Seeded fraction of embeddings responses missing their last vector.")
    )
    seed: int = field(default=0, metadata=_help("Seed of every random choice above, so runs repeat."))
    max_texts_per_request: int = field(
        default=0, metadata=_help("Texts allowed in one embeddings call; beyond it 413 (0 = unlimited).")
    )
    token_ttl_s: float = field(
        default=1800.0, metadata=_help("Lifetime of issued access tokens, in seconds.")
    )
    credentials: str = field(
        default=DEFAULT_CREDENTIALS,
        metadata=_help("Base64 authorization key accepted by the OAuth endpoint."),
    )
    user: str = field(default="emulator-user", metadata=_help("User name accepted by POST /api/v1/token."))
    password: str = field(
        default="emulator-password", metadata=_help("Password accepted by POST /api/v1/token.")
    )
    stream_break_after: int | None = field(
        default=None, metadata=_help("Cut every chat stream after N chunks, without [DONE].")
    )
    blacklist_word: str = field(
        default="BLACKLISTED_TOPIC",
        metadata=_help("Word that makes chat answer with finish_reason blacklist."),
    )
    max_body_bytes: int = field(
        default=DEFAULT_MAX_BODY_BYTES,
        metadata=_help(
            "Largest request body (uploads included) in bytes; a larger one gets 413 before it is read:"
            " at once by its Content-Length, or as soon as a chunked body passes it (0 = unlimited)."
        ),
    )
    allow_remote_admin: bool = field(
        default=False,
        metadata=_help(
            "Serve /_stats and /_admin/* to clients that are not on loopback (refused with 403 otherwise)."
        ),
    )

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "wrong_count_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        for name in (
            "base_latency_ms",
            "latency_jitter_ms",
            "per_text_latency_ms",
            "max_concurrency",
            "rps",
            "max_texts_per_request",
            "max_body_bytes",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.token_ttl_s <= 0:
            raise ValueError("token_ttl_s must be positive")
        if self.stream_break_after is not None and self.stream_break_after < 0:
            raise ValueError("stream_break_after must not be negative")

    def cli_args(self) -> list[str]:
        """The `pipeline emulator` options that rebuild this profile (non-default fields only)."""
        args: list[str] = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if value != spec.default:
                name = spec.name.replace("_", "-")
                if isinstance(value, bool):
                    args.append(f"--{name}" if value else f"--no-{name}")
                else:
                    args += [f"--{name}", str(value)]
        return args
