from pathlib import Path

import pytest

from pipeline.config import Secret, load_config, parse_size
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_default_config_file_loads_and_picks_local_model_without_credentials() -> None:
    cfg = load_config(ROOT / "configs" / "default.toml", env={})
    assert cfg.model == "e5-small-local"
    assert cfg.corpus == Path("data")
    assert cfg.index.memory_budget_bytes == 4 * 2**30
    assert cfg.model_spec().dimension == 384


def test_registry_holds_gigachat_models_from_the_spec() -> None:
    reg = load_config(None, env={}).registry
    assert (reg["Embeddings"].max_input_tokens, reg["Embeddings"].dimension) == (512, 1024)
    assert (reg["Embeddings-2"].max_input_tokens, reg["Embeddings-2"].dimension) == (512, 1024)
    assert (reg["EmbeddingsGigaR"].max_input_tokens, reg["EmbeddingsGigaR"].dimension) == (4096, 2560)
    assert reg["EmbeddingsGigaR"].query_instruction.startswith("Дан вопрос")
    assert {n for n, s in reg.items() if s.kind == "chat"} >= {"GigaChat-2-Lite", "GigaChat-2-Pro", "GigaChat-2-Max"}


@pytest.mark.parametrize("env", [{"GIGACHAT_CREDENTIALS": "abc"}, {"GIGACHAT_ACCESS_TOKEN": "t"},
                                 {"GIGACHAT_USER": "u", "GIGACHAT_PASSWORD": "p"}])
def test_auto_model_is_gigachat_when_any_auth_is_set(env: dict[str, str]) -> None:
    assert load_config(None, env=env).model == "Embeddings"


def test_environment_overrides_use_the_sdk_names() -> None:
    cfg = load_config(None, env={"GIGACHAT_CREDENTIALS": "c2VjcmV0", "GIGACHAT_SCOPE": "GIGACHAT_API_CORP",
                                 "GIGACHAT_BASE_URL": "http://127.0.0.1:1/api/v1/", "GIGACHAT_VERIFY_SSL_CERTS": "0",
                                 "GIGACHAT_TIMEOUT": "5", "PIPELINE_MODEL": "EmbeddingsGigaR"})
    assert cfg.gigachat.scope == "GIGACHAT_API_CORP"
    assert cfg.gigachat.base_url == "http://127.0.0.1:1/api/v1"
    assert cfg.gigachat.verify_ssl_certs is False
    assert cfg.gigachat.timeout_s == 5
    assert cfg.model == "EmbeddingsGigaR"


def test_secrets_never_show_in_repr() -> None:
    cfg = load_config(None, env={"GIGACHAT_CREDENTIALS": "TOP-SECRET-VALUE", "GIGACHAT_PASSWORD": "PW-SECRET"})
    assert "TOP-SECRET-VALUE" not in repr(cfg) and "PW-SECRET" not in repr(cfg)
    assert cfg.gigachat.credentials == Secret("TOP-SECRET-VALUE")
    assert cfg.gigachat.credentials.get() == "TOP-SECRET-VALUE"


@pytest.mark.parametrize(("content", "needle"), [
    ("model = [", "invalid TOML"),
    ("colour = 'blue'", "unknown keys"),
    ("[embedding]\nconcurrency = 0", "concurrency"),
    ("[index]\nmemory_budget = 'lots'", "memory_budget"),
    ("model = 'nope'", "unknown model 'nope'"),
    ("model = 'GigaChat-2-Max'", "chat model"),
])
def test_bad_config_is_one_clear_error_naming_the_file(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file_and_bad_scope() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(Path("/nonexistent/run.toml"), env={})
    with pytest.raises(ConfigError, match="GIGACHAT_SCOPE"):
        load_config(None, env={"GIGACHAT_SCOPE": "EVERYTHING"})


@pytest.mark.parametrize(("text", "expected"), [("4GiB", 4 * 2**30), ("512MB", 512 * 10**6), ("1000", 1000),
                                                ("1.5 GiB", int(1.5 * 2**30))])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected
