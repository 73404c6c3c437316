"""Config: the model registry and run configs (TOML), with environment overrides.

Builds frozen dataclasses; each stage receives only its part. Reads files and the environment, nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol
from urllib.parse import urlsplit

from .errors import ConfigError
from .records import ModelSpec

__all__ = [
    "AskConfig",
    "ChunkingConfig",
    "Config",
    "EmbeddingConfig",
    "EngineConfig",
    "GigaChatSettings",
    "ImagesConfig",
    "IndexConfig",
    "OpenAISettings",
    "Secret",
    "SourcesConfig",
    "StorageConfig",
    "find_registry",
    "load_config",
    "load_registry",
    "parse_size",
]

DEFAULT_MODEL_LOCAL = "e5-small-local"
DEFAULT_MODEL_GIGACHAT = "Embeddings"
DEFAULT_OUT_DIR = "out"
DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024  # the same default as sources.DEFAULT_MAX_FILE_BYTES
USER_REGISTRY = Path("configs") / "models.toml"  # relative to the working directory
PACKAGED_REGISTRY = "models.toml"  # package data of `pipeline`: the registry every install has

log = logging.getLogger("pipeline.config")


class Secret:
    """A credential that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class GigaChatSettings:
    """Connection settings for GigaChat; field names follow Sber's SDK (env GIGACHAT_<FIELD>)."""

    base_url: str = "https://gigachat.devices.sberbank.ru/api/v1"
    auth_url: str = "https://ngw.devices.sberbank.ru:9443/api/v2/oauth"
    credentials: Secret | None = None
    scope: str = "GIGACHAT_API_PERS"
    access_token: Secret | None = None
    user: str = ""
    password: Secret | None = None
    verify_ssl_certs: bool = True
    ca_bundle_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    key_file_password: Secret | None = None
    timeout_s: float = 30.0
    max_connections: int = 0
    chat_model: str = ""  # GIGACHAT_MODEL

    @property
    def has_auth(self) -> bool:
        return bool(self.credentials or self.access_token or (self.user and self.password))


@dataclass(frozen=True)
class ChunkingConfig:
    target_tokens: int = 0  # 0: the model's max_input_tokens
    overlap_tokens: int = 0
    exact_tokens: bool = False  # check chunk sizes with the provider's own counter (GigaChat /tokens/count)
    # embed each chunk with its document's title and heading path in front (env PIPELINE_CONTEXTUAL);
    # None: as the live index was built, else CONTEXTUAL_DEFAULT (run_context.contextual_setting)
    contextual: bool | None = None


@dataclass(frozen=True)
class EmbeddingConfig:
    batch_size: int = 0  # 0: the model's max_batch_texts
    concurrency: int = 8
    requests_per_minute: float = 0
    tokens_per_minute: float = 0
    max_attempts: int = 6
    max_retry_after_s: float = 300.0  # a longer Retry-After (or inf) is not waited for: the call fails, retryable
    # Texts read and chunked but not yet embedded, at most: with the row group being written, what bounds a
    # run's memory (about 4 KB a text), whatever the corpus size.
    max_queued_texts: int = 20_000


@dataclass(frozen=True)
class EngineConfig:
    """Where embed and reindex run: this process ("local"), or a Ray cluster ("ray", the pipeline[ray] extra)."""

    name: Literal["local", "ray"] = "local"
    ray_address: str = ""  # "": Ray's own choice (RAY_ADDRESS, else the latest local cluster, else a new one)
    workers: int = 0  # embedding actors on the cluster; 0: one per CPU of the cluster


@dataclass(frozen=True)
class IndexConfig:
    index_type: str = "auto"
    memory_budget_bytes: int = 4 << 30
    target_recall: float = 0.95
    bm25_max_rows: int = 200_000  # past it no BM25 index (no --hybrid): bm25s rebuilds whole, ~0.3 ms a chunk


@dataclass(frozen=True)
class AskConfig:
    # "auto": GigaChat-2-Lite when GigaChat credentials are set, else the extractive answer;
    # "": always extractive; otherwise a chat model of the registry (env PIPELINE_CHAT_MODEL).
    chat_model: str = "auto"
    k: int = 5
    max_rounds: int = 2  # search_corpus calls the chat model may make per question
    max_tokens: int = 1024  # the answer's length limit, reserved out of the model's context
    answer_max_chars: int = 800  # the extractive answer's length: units are added while they fit
    temperature: float | None = None  # None: the service's default; GigaChat refuses 0 (422)


@dataclass(frozen=True)
class SourcesConfig:
    """How the corpus is walked (sources.iter_documents): links, and the size past which a file is skipped."""

    follow_symlinks: bool = False  # env PIPELINE_FOLLOW_SYMLINKS; off: links are skipped and counted
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # TOML key max_file_size ("16MiB"); a text file, .jsonl line, image
    # A run deleting more than this share of the live documents is refused (an unmounted share, a wrong
    # path) unless --allow-shrink; an empty corpus never replaces a live index.
    max_deleted_share: float = 0.5


@dataclass(frozen=True)
class ImagesConfig:
    vision_model: str = ""  # a chat model with vision = true describes .png/.jpg; "": images are skipped


@dataclass(frozen=True)
class OpenAISettings:
    """An OpenAI-compatible server (LiteLLM proxy, vLLM, Ollama) for models with provider = "openai"."""

    base_url: str = ""  # env PIPELINE_OPENAI_BASE_URL, else OPENAI_BASE_URL
    api_key: Secret | None = None  # env PIPELINE_OPENAI_API_KEY, else OPENAI_API_KEY
    timeout_s: float = 60.0
    ca_bundle_file: str = ""  # trust only this CA for an https base_url (certifi otherwise)


@dataclass(frozen=True)
class StorageConfig:
    """An output on object storage (`--out s3://bucket/prefix`): endpoint, and the bounds of each remote call.

    Credentials are never here: pyarrow reads them as the AWS SDKs do (AWS_ACCESS_KEY_ID, ~/.aws, ...).
    """

    endpoint_url: str = ""  # env AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL; "": AWS itself
    region: str = ""  # env AWS_REGION, else AWS_DEFAULT_REGION; "": asked of the bucket
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 60.0  # one HTTP request (a multipart piece of an upload, not the whole file)
    max_attempts: int = 4  # per request, with the AWS SDK's backoff
    lease_ttl_s: float = 600.0  # a writer's lease object lapses this long after its last heartbeat


REMOTE_SCHEMES = ("s3", "gs", "file")  # --out URIs: S3 and compatible servers, Google Cloud Storage, a mount


def _remote_out(value: str, what: str) -> str | None:
    """The normalised URI when `value` is one (scheme://...), None for a local path.

    Raises ConfigError naming `what` (the option, variable or file that gave it)."""
    if "://" not in value:
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", value):  # s3:/bucket: a URI short of a slash, not a folder
            raise ConfigError(f"{what} {value}: not a URI (scheme://...) nor a plain directory; did you mean "
                              f"{value.replace(':/', '://', 1)}?")
        return None
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:  # s3://KEY:SECRET@bucket: never shown again, not even in this error
        raise ConfigError(f"{what}: credentials in the URI are not accepted (they would be logged); "
                          "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
    if scheme not in REMOTE_SCHEMES:
        raise ConfigError(f"{what} {value}: unsupported scheme {scheme!r}; use s3://bucket/prefix, "
                          "gs://bucket/prefix or file:///absolute/path")
    if parts.query or parts.fragment:
        raise ConfigError(f"{what} {value}: options in the URI are not read; set the endpoint and region in "
                          "[storage] or the AWS_* environment")
    path = parts.path.rstrip("/")
    if scheme == "file":
        if parts.netloc or not path.startswith("/"):
            raise ConfigError(f"{what} {value}: a file URI needs an absolute path: file:///srv/index")
        return f"file://{path}"
    if not parts.netloc or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,221}", parts.netloc):
        raise ConfigError(f"{what} {value}: expected {scheme}://bucket/prefix with a valid bucket name")
    if "//" in path or any(p in (".", "..") for p in path.split("/")):
        raise ConfigError(f"{what} {value}: the prefix has an empty, '.' or '..' part")
    return f"{scheme}://{parts.netloc}{path}"


def mirror_dir(cache_dir: Path, uri: str, endpoint_url: str = "") -> Path:
    """The local mirror of a remote output: under the cache, named for its URI (and endpoint: another server
    holds other data under the same name)."""
    digest = hashlib.sha256(f"{endpoint_url}|{uri}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.split("://", 1)[1]).strip("_")[:60]
    return cache_dir / "remote" / f"{readable}-{digest}"


@dataclass(frozen=True)
class Config:
    """A whole run's settings, after file, environment and command-line overrides.

    With a remote output (`out_uri`), `out_dir` is its local mirror under the cache (remote.py syncs the two).
    """

    corpus: Path | None
    model: str
    out_dir: Path
    cache_dir: Path
    registry: Mapping[str, ModelSpec]
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    ask: AskConfig = field(default_factory=AskConfig)
    gigachat: GigaChatSettings = field(default_factory=GigaChatSettings)
    openai: OpenAISettings = field(default_factory=OpenAISettings)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    out_uri: str = ""  # s3://bucket/prefix (or gs://, file://) when the output is remote; "" for a local one
    engine: EngineConfig = field(default_factory=EngineConfig)
    source: str = "<defaults>"

    def model_spec(self, name: str | None = None) -> ModelSpec:
        name = name or self.model
        try:
            return self.registry[name]
        except KeyError:
            known = ", ".join(sorted(self.registry))
            raise ConfigError(f"unknown model {name!r}; known models: {known}") from None

    def with_overrides(self, **changes: Any) -> Config:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def with_out(self, value: str | Path, what: str = "--out") -> Config:
        """This config writing to `value`: a local directory, or a URI (s3://bucket/prefix) and its mirror.

        Every change of output goes through here, so a remote URI never outlives the directory it mirrors.
        Raises ConfigError naming `what` for a URI that cannot be one.
        """
        uri = _remote_out(str(value), what) if isinstance(value, str) else None
        if uri is None:
            return replace(self, out_dir=Path(value), out_uri="")
        return replace(self, out_dir=mirror_dir(self.cache_dir, uri, self.storage.endpoint_url), out_uri=uri)

    @property
    def out_label(self) -> str:
        """The output as the user named it: the URI of a remote one, else the directory."""
        return self.out_uri or str(self.out_dir)

    def without_secrets(self) -> Config:
        """This config with every credential left out: what is sent to other machines (the Ray engine's
        workers), which take theirs from their own environment (with_env_secrets)."""
        gigachat = replace(self.gigachat, **{name: None for name in _GIGACHAT_SECRETS})
        return replace(self, gigachat=gigachat, openai=replace(self.openai, api_key=None))

    def with_env_secrets(self, env: Mapping[str, str]) -> Config:
        """Credentials from `env` (GIGACHAT_*, PIPELINE_OPENAI_API_KEY or OPENAI_API_KEY), as load_config reads
        them, into a config that has none (without_secrets)."""
        found = {name: Secret(env[f"GIGACHAT_{name.upper()}"]) for name in _GIGACHAT_SECRETS
                 if env.get(f"GIGACHAT_{name.upper()}")}
        key = env.get("PIPELINE_OPENAI_API_KEY") or env.get("OPENAI_API_KEY")
        return replace(self, gigachat=replace(self.gigachat, **found),
                       openai=replace(self.openai, api_key=Secret(key) if key else None))


_GIGACHAT_SECRETS = ("credentials", "access_token", "password", "key_file_password")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1024, "M": 1000**2, "MB": 1000**2,
          "MIB": 1024**2, "G": 1000**3, "GB": 1000**3, "GIB": 1024**3, "T": 1000**4, "TB": 1000**4,
          "TIB": 1024**4}


def parse_size(text: str | int, *, what: str = "size") -> int:
    """'4GiB', '512MB', '1000' -> bytes."""
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ConfigError(f"{what}: expected a size such as \"512MiB\" or a number of bytes, got {_shown(text)}")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"{what}: a size must not be negative, got {text}")
        return text
    m = _SIZE.match(text)
    unit = (m.group(2) or "").upper() if m else ""
    if not m or unit not in _UNITS:
        raise ConfigError(f"{what}: cannot read {text!r} as a size (examples: 512MiB, 4GiB)")
    return int(float(m.group(1)) * _UNITS[unit])


class _Readable(Protocol):
    def open(self, mode: str = "rb") -> BinaryIO: ...


def find_registry(env: Mapping[str, str]) -> Path | _Readable:
    """The model registry: $PIPELINE_REGISTRY, else ./configs/models.toml if the working directory has one,
    else the registry shipped inside the package (pipeline/models.toml). A `registry` key in the run config
    comes before all three (load_config). The first one found is used whole; registries are not merged.
    """
    if env.get("PIPELINE_REGISTRY"):
        path = Path(env["PIPELINE_REGISTRY"])
        if not path.is_file():
            raise ConfigError(f"{path}: model registry not found (PIPELINE_REGISTRY)")
        return path
    if USER_REGISTRY.is_file():
        log.info("model registry: %s (the working directory's)", USER_REGISTRY)
        return USER_REGISTRY
    packaged = resources.files("pipeline") / PACKAGED_REGISTRY
    if not packaged.is_file():
        raise ConfigError(f"{packaged}: the packaged model registry is missing (reinstall, or set PIPELINE_REGISTRY)")
    return packaged


def _read_toml(path: Path | _Readable) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


_SPEC_FIELDS = set(ModelSpec.__dataclass_fields__) - {"name"}


def load_registry(path: Path | _Readable) -> dict[str, ModelSpec]:
    data = _read_toml(path)
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"{path}: no [models.<name>] tables")
    registry: dict[str, ModelSpec] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: models.{name} must be a table")
        unknown = set(entry) - _SPEC_FIELDS
        if unknown:
            raise ConfigError(f"{path}: model {name!r}: unknown keys {sorted(unknown)}")
        _check_types(entry, ModelSpec, f"{path}: [models.{name}]")
        try:
            spec = ModelSpec(name=name, **entry)
        except TypeError as e:
            raise ConfigError(f"{path}: model {name!r}: {e}") from None
        if spec.kind not in ("embed", "chat"):
            raise ConfigError(f"{path}: model {name!r}: kind must be 'embed' or 'chat'")
        if spec.kind == "embed" and spec.dimension <= 0:
            raise ConfigError(f"{path}: model {name!r}: an embedding model needs a dimension")
        if spec.max_input_tokens <= 0:
            raise ConfigError(f"{path}: model {name!r}: max_input_tokens must be positive")
        registry[name] = spec
    return registry


def _shown(value: Any) -> str:
    """A wrong value for an error message: short, and its type named."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               Path: "a path (string)", Secret: "a string"}


def _accepts(kind: Any, value: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind in (str, Path, Secret):
        return isinstance(value, str)
    if typing.get_origin(kind) is typing.Literal:
        return value in typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return any(_accepts(k, value) for k in typing.get_args(kind) if k is not type(None))
    return True  # a type TOML cannot hold wrongly (none in these dataclasses today)


def _expected(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(kind))
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return " or ".join(_expected(k) for k in typing.get_args(kind) if k is not type(None))
    return _TYPE_WORDS.get(kind, getattr(kind, "__name__", str(kind)))


def _check_types(values: Mapping[str, Any], cls: type, where: str, *, secret: frozenset[str] = frozenset(),
                 extra: Mapping[str, Any] | None = None) -> None:
    """ConfigError naming `where` and the key when a TOML value does not fit the dataclass field's type.

    The values of secret keys are never shown, only their type. `extra` gives the types of keys that are not
    fields (memory_budget) or that map to another field name.
    """
    hints = typing.get_type_hints(cls) | dict(extra or {})
    for key, value in values.items():
        kind = hints.get(key)
        if kind is None or _accepts(kind, value):
            continue
        got = type(value).__name__ if key in secret else _shown(value)
        raise ConfigError(f"{where} {key}: expected {_expected(kind)}, got {got}")


def _section(data: dict[str, Any], name: str, path: Path, cls: type) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    allowed = set(cls.__dataclass_fields__)
    renamed = {"index": ("memory_budget_bytes", "memory_budget"), "sources": ("max_file_bytes", "max_file_size")}
    extra: dict[str, Any] = {}
    if name in renamed:
        field_name, key = renamed[name]
        allowed = (allowed - {field_name}) | {key}
        extra[key] = int | str  # a size: bytes, or "4GiB"
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"{path}: [{name}]: unknown keys {sorted(unknown)}")
    secret = frozenset({"api_key"}) if name == "openai" else frozenset()
    _check_types(section, cls, f"{path}: [{name}]", secret=secret, extra=extra)
    return dict(section)


def _env_bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {raw!r}")


def _env_float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{key}: expected a number, got {raw!r}") from None


def _gigachat_settings(section: dict[str, Any], env: Mapping[str, str], path: Path) -> GigaChatSettings:
    def pick(key: str, default: Any = "") -> Any:
        return env.get(f"GIGACHAT_{key.upper()}") or section.get(key, default)

    def secret(key: str) -> Secret | None:
        value = env.get(f"GIGACHAT_{key.upper()}") or section.get(key) or ""
        return Secret(value) if value else None

    unknown = set(section) - set(GigaChatSettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"{path}: [gigachat]: unknown keys {sorted(unknown)}")
    _check_types(section, GigaChatSettings, f"{path}: [gigachat]",
                 secret=frozenset({"credentials", "access_token", "password", "key_file_password"}))
    defaults = GigaChatSettings()
    scope = pick("scope", defaults.scope)
    if scope not in ("GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP"):
        raise ConfigError(f"GIGACHAT_SCOPE: {scope!r} is not one of GIGACHAT_API_PERS, _B2B, _CORP")
    return GigaChatSettings(
        base_url=str(pick("base_url", defaults.base_url)).rstrip("/"),
        auth_url=str(pick("auth_url", defaults.auth_url)),
        credentials=secret("credentials"),
        scope=scope,
        access_token=secret("access_token"),
        user=str(pick("user", "")),
        password=secret("password"),
        verify_ssl_certs=_env_bool(env, "GIGACHAT_VERIFY_SSL_CERTS",
                                   bool(section.get("verify_ssl_certs", True))),
        ca_bundle_file=str(pick("ca_bundle_file", "")),
        cert_file=str(pick("cert_file", "")),
        key_file=str(pick("key_file", "")),
        key_file_password=secret("key_file_password"),
        timeout_s=_env_float(env, "GIGACHAT_TIMEOUT", float(section.get("timeout_s", 30.0))),
        max_connections=int(_env_float(env, "GIGACHAT_MAX_CONNECTIONS",
                                       float(section.get("max_connections", 0)))),
        chat_model=str(pick("model", "")) if "GIGACHAT_MODEL" in env else str(section.get("chat_model", "")),
    )


def _openai_settings(section: dict[str, Any], env: Mapping[str, str]) -> OpenAISettings:
    """[openai] with PIPELINE_OPENAI_* and then the openai SDK's OPENAI_* variables on top."""

    def pick(key: str) -> str:
        name = key.upper()
        return env.get(f"PIPELINE_OPENAI_{name}") or env.get(f"OPENAI_{name}") or str(section.get(key) or "")

    key = pick("api_key")
    return OpenAISettings(
        base_url=pick("base_url").rstrip("/"),
        api_key=Secret(key) if key else None,
        timeout_s=float(section.get("timeout_s", OpenAISettings.timeout_s)),
        ca_bundle_file=str(section.get("ca_bundle_file") or ""),
    )


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    if env.get("PIPELINE_CACHE_DIR"):
        return Path(env["PIPELINE_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "pipeline"


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    model: str | None = None,
    corpus: Path | None = None,
    out_dir: Path | str | None = None,
) -> Config:
    """Read a run config (or defaults), apply the environment, then explicit overrides.

    Raises ConfigError naming the file or variable at fault.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    cfg_path = path or Path("<defaults>")
    if path is not None:
        data = _read_toml(path)
    top_allowed = {"corpus", "model", "out_dir", "cache_dir", "registry", "chunking", "embedding",
                   "index", "ask", "gigachat", "openai", "images", "sources", "storage", "engine"}
    unknown = set(data) - top_allowed
    if unknown:
        raise ConfigError(f"{cfg_path}: unknown keys {sorted(unknown)}")
    for key in ("corpus", "model", "out_dir", "cache_dir", "registry"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{cfg_path}: {key}: expected a string, got {_shown(data[key])}")
    for key in ("chunking", "embedding", "index", "ask", "gigachat", "openai", "images", "sources",
                "storage", "engine"):
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(f"{cfg_path}: [{key}] must be a table, got {_shown(data[key])}")

    registry_path = Path(data["registry"]) if data.get("registry") else find_registry(env)
    registry = load_registry(registry_path)
    gigachat = _gigachat_settings(dict(data.get("gigachat", {})), env, cfg_path)

    chosen = model or env.get("PIPELINE_MODEL") or data.get("model") or "auto"
    if chosen == "auto":
        chosen = DEFAULT_MODEL_GIGACHAT if gigachat.has_auth else DEFAULT_MODEL_LOCAL
    if chosen not in registry:
        known = ", ".join(sorted(n for n, s in registry.items() if s.kind == "embed"))
        raise ConfigError(f"--model: unknown model {chosen!r}; embedding models: {known}")
    if registry[chosen].kind != "embed":
        raise ConfigError(f"--model: {chosen!r} is a chat model, not an embedding model")

    try:
        chunking = ChunkingConfig(**_section(data, "chunking", cfg_path, ChunkingConfig))
        embedding = EmbeddingConfig(**_section(data, "embedding", cfg_path, EmbeddingConfig))
        index_raw = _section(data, "index", cfg_path, IndexConfig)
        if "memory_budget" in index_raw:
            index_raw["memory_budget_bytes"] = parse_size(index_raw.pop("memory_budget"),
                                                          what=f"{cfg_path}: [index] memory_budget")
        index = IndexConfig(**index_raw)
        ask = AskConfig(**_section(data, "ask", cfg_path, AskConfig))
        images = ImagesConfig(**_section(data, "images", cfg_path, ImagesConfig))
        sources_raw = _section(data, "sources", cfg_path, SourcesConfig)
        if "max_file_size" in sources_raw:
            sources_raw["max_file_bytes"] = parse_size(sources_raw.pop("max_file_size"),
                                                       what=f"{cfg_path}: [sources] max_file_size")
        sources = SourcesConfig(**sources_raw)
        openai = _openai_settings(_section(data, "openai", cfg_path, OpenAISettings), env)
        storage = _storage_settings(_section(data, "storage", cfg_path, StorageConfig), env, cfg_path)
        engine = EngineConfig(**_section(data, "engine", cfg_path, EngineConfig))
    except TypeError as e:
        raise ConfigError(f"{cfg_path}: {e}") from None
    if env.get("PIPELINE_CHAT_MODEL") is not None:
        ask = replace(ask, chat_model=env["PIPELINE_CHAT_MODEL"])
    sources = replace(sources, follow_symlinks=_env_bool(env, "PIPELINE_FOLLOW_SYMLINKS", sources.follow_symlinks))
    if env.get("PIPELINE_CONTEXTUAL"):
        chunking = replace(chunking, contextual=_env_bool(env, "PIPELINE_CONTEXTUAL", False))
    if sources.max_file_bytes < 1:
        raise ConfigError(f"{cfg_path}: [sources] max_file_size must be positive")
    if env.get("PIPELINE_VISION_MODEL") is not None:
        images = replace(images, vision_model=env["PIPELINE_VISION_MODEL"])
    if ask.max_rounds < 0 or ask.max_tokens < 1 or ask.answer_max_chars < 1:
        raise ConfigError(f"{cfg_path}: [ask] max_rounds must not be negative, max_tokens and answer_max_chars "
                          "must be positive")
    if chunking.overlap_tokens < 0 or chunking.target_tokens < 0:
        raise ConfigError(f"{cfg_path}: [chunking] sizes must not be negative")
    if engine.workers < 0:
        raise ConfigError(f"{cfg_path}: [engine] workers must not be negative")
    if embedding.concurrency < 1 or embedding.max_attempts < 1 or embedding.max_queued_texts < 1:
        raise ConfigError(f"{cfg_path}: [embedding] concurrency, max_attempts and max_queued_texts must be at "
                          "least 1")

    corpus_value = corpus or (Path(data["corpus"]) if data.get("corpus") else None)
    # (value, where it came from): a bad URI's error names the option, variable or file that gave it
    out_value: str | Path = DEFAULT_OUT_DIR
    out_what = "out_dir"
    if out_dir:
        out_value, out_what = out_dir, "--out"
    elif env.get("PIPELINE_OUT_DIR"):
        out_value, out_what = env["PIPELINE_OUT_DIR"], "PIPELINE_OUT_DIR"
    elif data.get("out_dir"):
        out_value, out_what = data["out_dir"], f"{cfg_path}: out_dir"
    cache_value = Path(data["cache_dir"]) if data.get("cache_dir") else _default_cache_dir(env)
    return Config(
        corpus=corpus_value,
        model=chosen,
        out_dir=Path(DEFAULT_OUT_DIR),
        cache_dir=cache_value,
        registry=registry,
        chunking=chunking,
        embedding=embedding,
        index=index,
        ask=ask,
        gigachat=gigachat,
        openai=openai,
        images=images,
        sources=sources,
        storage=storage,
        engine=engine,
        source=str(cfg_path),
    ).with_out(out_value, out_what)


def _storage_settings(section: dict[str, Any], env: Mapping[str, str], path: Path) -> StorageConfig:
    """[storage], with the AWS SDKs' own variables on top for the endpoint and region."""
    storage = StorageConfig(**section)
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or storage.endpoint_url
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or storage.region
    if endpoint and (urlsplit(endpoint).scheme not in ("http", "https") or "@" in urlsplit(endpoint).netloc):
        raise ConfigError(f"{path}: [storage] endpoint_url (or AWS_ENDPOINT_URL): expected "
                          "http(s)://host[:port] without credentials")
    if min(storage.connect_timeout_s, storage.request_timeout_s, storage.lease_ttl_s) <= 0 \
            or storage.max_attempts < 1:
        raise ConfigError(f"{path}: [storage] timeouts and lease_ttl_s must be positive, max_attempts >= 1")
    return replace(storage, endpoint_url=endpoint.rstrip("/"), region=region)
