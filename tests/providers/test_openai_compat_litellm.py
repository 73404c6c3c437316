"""The product served by a real LiteLLM proxy (the seed's model_list) routed to GigaChat emulators.

Heavy (LiteLLM takes 10-20 s to start), so it runs under `make test-integration`, which installs LiteLLM into
its own venv and sets LITELLM_BIN; plain `make test` skips it.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from pipeline import api
from pipeline.config import Config, load_config
from pipeline.emulator import EmulatorProfile, start_emulator
from pipeline.errors import NetworkError
from pipeline.sources import SourceReport, iter_documents

LITELLM = os.environ.get("LITELLM_BIN", "")
if not LITELLM:
    pytest.skip("LITELLM_BIN not set: run `make test-integration`", allow_module_level=True)

MASTER_KEY = "sk-pipeline-integration-0123456789"
BROKEN_CREDENTIALS = base64.b64encode(b"broken-client:broken-secret").decode()
# The seed's model_list (shared/seeds/litellm-gigachat.md), plus one model on an emulator that cuts streams.
# ssl_verify is not needed: the emulators serve plain HTTP on 127.0.0.1, so no verification is turned off.
CONFIG_YAML = """\
model_list:
  - model_name: gigachat
    litellm_params:
      model: gigachat/GigaChat-2-Max
      api_key: "os.environ/GIGACHAT_CREDENTIALS"
  - model_name: gigachat-lite
    litellm_params:
      model: gigachat/GigaChat-2-Lite
      api_key: "os.environ/GIGACHAT_CREDENTIALS"
  - model_name: gigachat-embeddings
    litellm_params:
      model: gigachat/Embeddings
      api_key: "os.environ/GIGACHAT_CREDENTIALS"
  - model_name: gigachat-broken
    litellm_params:
      model: gigachat/GigaChat-2-Lite
      api_key: "{broken_credentials}"
      api_base: "{broken_base}"
      gigachat_auth_url: "{broken_auth}"
"""
DOCS = {"space.txt": "A black hole is a region of spacetime where gravity is so strong that nothing, not even "
                     "light, can escape.",
        "coffee.txt": "Espresso is brewed by forcing hot water through finely ground coffee at high pressure.",
        "metro.txt": "Московский метрополитен открылся в 1935 году."}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """LiteLLM on a free port, its GigaChat models routed to two in-process emulators."""
    root = tmp_path_factory.mktemp("litellm")
    with start_emulator(EmulatorProfile()) as emu, \
            start_emulator(EmulatorProfile(stream_break_after=2, credentials=BROKEN_CREDENTIALS)) as broken:
        (root / "config.yaml").write_text(CONFIG_YAML.format(
            broken_credentials=BROKEN_CREDENTIALS, broken_base=broken.base_url, broken_auth=broken.auth_url))
        port = _free_port()
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(root),
               "GIGACHAT_API_BASE": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
               "GIGACHAT_CREDENTIALS": emu.credentials, "LITELLM_MASTER_KEY": MASTER_KEY,
               "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list from the internet
               "NO_DOCS": "True", "DISABLE_ADMIN_UI": "True"}
        log = (root / "litellm.log").open("w")
        child = subprocess.Popen([LITELLM, "--config", str(root / "config.yaml"), "--host", "127.0.0.1",
                                  "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(url + "/health/liveliness", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if child.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("LiteLLM did not start:\n" + (root / "litellm.log").read_text()[-3000:])
                time.sleep(0.25)
            yield url
        finally:
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            log.close()


@pytest.fixture(scope="module")
def indexed(proxy: str, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A corpus embedded through the proxy's gigachat-embeddings (provider openai)."""
    root = tmp_path_factory.mktemp("litellm-index")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    env = {"HOME": str(root), "PIPELINE_OPENAI_BASE_URL": proxy, "PIPELINE_OPENAI_API_KEY": MASTER_KEY}
    config = load_config(None, env, model="gigachat-embeddings", corpus=corpus, out_dir=root / "out")
    report = api.embed(config)
    assert report.embedded == 3 and report.failed_chunks == 0, report.failure_reasons
    return config


def test_embeddings_through_the_proxy_are_searchable(indexed: Config) -> None:
    assert api.search(indexed, "espresso coffee pressure", k=1).hits[0].source_path == "coffee.txt"


def test_streamed_cited_answer_through_the_proxy(indexed: Config) -> None:
    deltas: list[str] = []
    answer = api.ask(indexed, "What is a black hole?", k=2, chat_model="gigachat-lite", on_delta=deltas.append)
    assert answer.mode == "chat" and answer.model == "gigachat-lite"
    assert len(deltas) > 1 and "".join(deltas) == answer.text
    assert answer.grounded and answer.sources[answer.cited[0] - 1].source_path == "space.txt"


def test_function_calling_through_the_proxy(indexed: Config) -> None:
    answer = api.ask(indexed, "What is a black hole? Also search for «espresso pressure»", k=1,
                     chat_model="gigachat")
    assert answer.searches == ["espresso pressure"]
    assert answer.sources[-1].source_path == "coffee.txt" and answer.cited == [len(answer.sources)]


def test_structured_output_through_the_proxy(indexed: Config) -> None:
    answer = api.ask(indexed, "Repeat exactly «black holes trap even light [1]»", k=2, chat_model="gigachat-lite",
                     structured=True)
    assert answer.mode == "structured" and answer.text == "black holes trap even light [1]"
    assert answer.cited == [1] and answer.citations[0].chunk_id == answer.sources[0].chunk_id


def test_length_and_temperature_through_the_proxy(indexed: Config) -> None:
    cut = api.ask(replace(indexed, ask=replace(indexed.ask, max_tokens=5)), "What is a black hole?", k=1,
                  chat_model="gigachat-lite")
    assert cut.truncated and any("max_tokens" in w for w in cut.warnings)
    # LiteLLM turns temperature 0 into top_p 0 for GigaChat, so the 422 never reaches us through it
    zero = api.ask(replace(indexed, ask=replace(indexed.ask, temperature=0.0)), "What is a black hole?", k=1,
                   chat_model="gigachat-lite")
    assert zero.grounded


def test_refusal_through_the_proxy_arrives_as_a_plain_stop(indexed: Config) -> None:
    # LiteLLM 1.108 has no mapping for GigaChat's finish_reason "blacklist" and reports "stop", so through
    # the proxy a refusal reads as an ordinary answer that cites nothing: flagged as ungrounded, not refused.
    answer = api.ask(indexed, "Tell me about BLACKLISTED_TOPIC", k=1, chat_model="gigachat-lite")
    assert answer.finish_reason == "stop" and not answer.grounded


def test_stream_broken_midway_through_the_proxy(indexed: Config) -> None:
    shown: list[str] = []
    from pipeline.records import ModelSpec

    broken = ModelSpec(name="gigachat-broken", provider="openai", kind="chat", max_input_tokens=128000)
    config = replace(indexed, registry={**indexed.registry, broken.name: broken})
    with pytest.raises(NetworkError, match="stream broke after .* characters"):
        api.ask(config, "What is a black hole?", k=1, chat_model="gigachat-broken", on_delta=shown.append)
    assert shown


def test_images_described_through_the_proxy(indexed: Config, tmp_path: Path, png: bytes) -> None:
    from pipeline.images import image_describer

    (tmp_path / "chart.png").write_bytes(png)  # 3x2
    config = replace(indexed, images=replace(indexed.images, vision_model="gigachat"), cache_dir=tmp_path / "c")
    describer = image_describer(config)
    assert describer is not None
    report = SourceReport()
    try:
        (doc,) = list(iter_documents(tmp_path, report, describer))
    finally:
        describer.close()
    assert doc.doc_type == "image" and doc.source_path == "chart.png" and "3×2" in doc.text
