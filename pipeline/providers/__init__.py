"""Providers: the registry that turns a ModelSpec into an EmbeddingProvider or a ChatModel.

Every provider, built-in or not, is a ProviderPlugin named by an entry point of the `pipeline.providers` group.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from ..errors import ConfigError, PipelineError
from ..records import ModelSpec
from .base import ChatProviderPlugin, EmbeddingProvider, ProviderPlugin, WarmUpProvider

if TYPE_CHECKING:
    from ..config import Config
    from .chat import ChatModel

__all__ = ["EmbeddingProvider", "chat_model", "check_credentials", "embedding_provider", "plugin",
           "provider_endpoint", "warmed_provider"]

GROUP = "pipeline.providers"


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@cache
def plugin(name: str) -> ProviderPlugin:
    """The plugin registered as `name`. Raises ConfigError when none is installed, or it is not a plugin."""
    ep = _entry_points().get(name)
    if ep is None:
        known = ", ".join(sorted(_entry_points())) or "none"
        raise ConfigError(f"no provider named {name!r} is installed (entry-point group {GROUP}: {known})")
    found = ep.load()
    if not isinstance(found, ProviderPlugin):
        raise ConfigError(f"provider {name!r}: {ep.value} is not a provider plugin (see providers.base)")
    return found


def _plugin_for(spec: ModelSpec) -> ProviderPlugin:
    try:
        return plugin(spec.provider)
    except ConfigError as e:
        raise ConfigError(f"model {spec.name}: {e}") from None


def provider_endpoint(spec: ModelSpec, config: Config) -> str:
    """Where vectors come from: part of the cache key, so an emulator's vectors never pass for real ones."""
    if spec.provider not in _entry_points():
        return spec.provider  # a provider made by the caller (tests, library use), not through the registry
    return plugin(spec.provider).endpoint(config)


def check_credentials(spec: ModelSpec, config: Config, *, what: str = "model", alternative: str = "") -> None:
    """Raises ConfigError when spec's provider is unknown or lacks credentials (`what spec.name needs ...`)."""
    _plugin_for(spec).check_credentials(spec, config, what=what, alternative=alternative)


def embedding_provider(spec: ModelSpec, config: Config) -> EmbeddingProvider:
    """A ready provider for an embedding model. Raises ConfigError for unknown providers or missing auth."""
    if spec.kind != "embed":
        raise ConfigError(f"{spec.name} is a {spec.kind} model, not an embedding model")
    found = _plugin_for(spec)
    found.check_credentials(spec, config)
    return found.embedding_provider(spec, config)


def chat_model(spec: ModelSpec, config: Config) -> ChatModel:
    """A ChatModel for a chat model of the registry, its calls retried (RetryPolicy); ConfigError for a
    provider without chat or without credentials."""
    found = _plugin_for(spec)
    if not isinstance(found, ChatProviderPlugin):
        raise ConfigError(f"chat model {spec.name}: provider {spec.provider!r} has no chat API here "
                          "(use 'gigachat' or 'openai')")
    found.check_credentials(spec, config, what="chat model")
    from .retry import RetryingChatModel, RetryPolicy

    return RetryingChatModel(found.chat_model(spec, config), RetryPolicy.for_config(config))


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
    if isinstance(provider, WarmUpProvider):
        provider.warm_up()
    return provider
