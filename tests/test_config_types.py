"""Config values of the wrong type are one ConfigError naming the file and the key (exit 2 from the CLI), and the
model registry is found in a documented order: run config > $PIPELINE_REGISTRY > ./configs/models.toml > package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import SourcesConfig, find_registry, load_config, parse_size
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("content", "needle"), [
    ('[embedding]\nbatch_size = "ten"', "[embedding] batch_size: expected an integer, got 'ten' (str)"),
    ("[embedding]\nrequests_per_minute = [1]", "[embedding] requests_per_minute: expected a number, got [1] (list)"),
    ("[embedding]\nconcurrency = 2.5", "[embedding] concurrency: expected an integer"),
    ("[index]\nmemory_budget = true", "[index] memory_budget: expected an integer or a string, got True (bool)"),
    ("[index]\ntarget_recall = '0.9'", "[index] target_recall: expected a number"),
    ("[chunking]\nexact_tokens = 'yes'", "[chunking] exact_tokens: expected true or false"),
    ("[ask]\ntemperature = 'hot'", "[ask] temperature: expected a number"),
    ("[ask]\nanswer_max_chars = '800'", "[ask] answer_max_chars: expected an integer"),
    ("[ask]\nanswer_max_chars = 0", "[ask] max_rounds must not be negative, max_tokens and answer_max_chars must "
                                    "be positive"),
    ("[gigachat]\nverify_ssl_certs = 'no'", "[gigachat] verify_ssl_certs: expected true or false"),
    ("[gigachat]\ntimeout_s = '30'", "[gigachat] timeout_s: expected a number"),
    ("[openai]\nbase_url = 4000", "[openai] base_url: expected a string"),
    ("[sources]\nfollow_symlinks = 1", "[sources] follow_symlinks: expected true or false"),
    ("[sources]\nmax_file_size = 'huge'", "[sources] max_file_size"),
    ("corpus = 1", "corpus: expected a string, got 1 (int)"),
    ("embedding = 3", "[embedding] must be a table"),
])
def test_a_value_of_the_wrong_type_names_the_file_and_the_key(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(str(path)) and needle in str(caught.value)


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[gigachat]\ncredentials = 123456789\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[gigachat\] credentials: expected a string, got int") as caught:
        load_config(path, env={})
    assert "123456789" not in str(caught.value)


@pytest.mark.parametrize(("content", "key"), [('[embedding]\nbatch_size = "ten"', "batch_size"),
                                              ("[index]\nmemory_budget = true", "memory_budget")])
def test_the_cli_exits_2_with_one_line_naming_the_key(tmp_path: Path, content: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content + "\n", encoding="utf-8")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("text", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "pipeline", "embed", str(tmp_path / "corpus"), "--config",
                             str(path), "--out", str(tmp_path / "out"), "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and key in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_wrong_type_in_the_registry_names_the_model_and_key(tmp_path: Path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text('[models.m]\nprovider = "local"\nkind = "embed"\nmax_input_tokens = "512"\ndimension = 8\n',
                        encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[models\.m\] max_input_tokens: expected an integer"):
        load_config(None, env={"PIPELINE_REGISTRY": str(registry)})
    registry.write_text('[models.m]\nprovider = "local"\nkind = "both"\nmax_input_tokens = 5\ndimension = 8\n',
                        encoding="utf-8")
    with pytest.raises(ConfigError, match="kind"):
        load_config(None, env={"PIPELINE_REGISTRY": str(registry)})


def test_parse_size_refuses_booleans_and_negative_numbers() -> None:
    with pytest.raises(ConfigError, match="got True"):
        parse_size(True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="negative"):
        parse_size(-1)


def test_sources_section_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[sources]\nfollow_symlinks = true\nmax_file_size = "2MiB"\n', encoding="utf-8")
    assert load_config(path, env={}).sources == SourcesConfig(follow_symlinks=True, max_file_bytes=2 * 1024 * 1024)
    assert load_config(None, env={}).sources == SourcesConfig()
    assert load_config(None, env={"PIPELINE_FOLLOW_SYMLINKS": "1"}).sources.follow_symlinks is True
    assert load_config(path, env={"PIPELINE_FOLLOW_SYMLINKS": "0"}).sources.follow_symlinks is False


def _registry(path: Path, name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[models.{name}]\nprovider = "local"\nkind = "embed"\nmax_input_tokens = 512\n'
                    f'dimension = 384\ntokenizer = "e5"\n', encoding="utf-8")
    return path


def test_registry_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    packaged = load_config(None, env={}, model="e5-small-local").registry  # no ./configs here: the package's
    assert {"e5-small-local", "Embeddings", "GigaChat-2-Max"} <= set(packaged)
    assert find_registry({}).read_bytes() == (ROOT / "pipeline" / "models.toml").read_bytes()

    _registry(tmp_path / "configs" / "models.toml", "cwd-model")
    assert set(load_config(None, env={}, model="cwd-model").registry) == {"cwd-model"}

    env = {"PIPELINE_REGISTRY": str(_registry(tmp_path / "env.toml", "env-model"))}
    assert set(load_config(None, env=env, model="env-model").registry) == {"env-model"}

    run = tmp_path / "run.toml"
    run.write_text(f'registry = "{_registry(tmp_path / "key.toml", "key-model")}"\n', encoding="utf-8")
    assert set(load_config(run, env=env, model="key-model").registry) == {"key-model"}

    with pytest.raises(ConfigError, match="PIPELINE_REGISTRY"):
        load_config(None, env={"PIPELINE_REGISTRY": str(tmp_path / "missing.toml")})


def test_the_packaged_registry_is_package_data() -> None:
    """pipeline/models.toml is the default registry, a file of the package; configs/ holds only a user's override."""
    packaged = ROOT / "pipeline" / "models.toml"
    assert packaged.is_file() and not packaged.is_symlink()
    assert not (ROOT / "configs" / "models.toml").exists()
    assert 'pipeline = ["models.toml"]' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
