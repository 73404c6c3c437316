"""`pipeline embed data/` with the GigaChat provider, through a running emulator over real HTTP (and TLS)."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import trustme

from pipeline.emulator import EmulatorProfile, start_emulator
from pipeline.store import current_snapshot

DATA = Path(__file__).resolve().parent.parent / "data"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=240)


def _env(emu, **extra: str) -> dict[str, str]:
    return {"GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
            "GIGACHAT_CREDENTIALS": emu.credentials, **extra}


@pytest.mark.parametrize(("model", "dim"), [("Embeddings", 1024), ("EmbeddingsGigaR", 2560)])
def test_embed_the_sample_corpus_through_gigachat(tmp_path: Path, model: str, dim: int) -> None:
    out = tmp_path / "out"
    with start_emulator(EmulatorProfile()) as emu:
        env = _env(emu)
        result = _cli("embed", str(DATA), "--model", model, "--out", str(out), "--no-progress", env=env)
        assert result.returncode == 0, result.stderr
        stats = emu.stats()
        assert stats["status_counts"].get("413", 0) == 0  # the chunker stays under the service's own count
        # The CLI starts the token fetch before the stages import and hands that provider to embed: one token.
        assert stats["tokens_issued"] == 1
        search = _cli("search", "how do I create a virtual environment", "-k", "3", "--out", str(out), env=env)
        assert search.returncode == 0, search.stderr
    table = pq.read_table(current_snapshot(out).vectors_path)
    assert table.schema.field("vector").type.list_size == dim
    assert table.num_rows == len(set(table.column("chunk_id").to_pylist()))
    assert "python-virtual-environments-pip.md" in search.stdout.splitlines()[0]
    assert emu.credentials not in result.stderr + result.stdout


def test_gigachat_over_tls_with_our_ca_and_verification_on(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Sourdough\n\nFeed the starter daily.\n", encoding="utf-8")
    with start_emulator(EmulatorProfile(), tls=(str(cert_pem), str(key_pem))) as emu:
        assert emu.base_url.startswith("https://")
        ok = _cli("embed", str(corpus), "--out", str(tmp_path / "ok"), "--no-progress",
                  env=_env(emu, GIGACHAT_CA_BUNDLE_FILE=str(ca_pem)))
        assert ok.returncode == 0, ok.stderr
        refused = _cli("embed", str(corpus), "--out", str(tmp_path / "no"), "--no-progress",
                       env=_env(emu, PIPELINE_CACHE_DIR=str(tmp_path / "fresh-cache")))
    assert refused.returncode != 0
    assert "certificate" in refused.stderr.lower()


def test_wrong_credentials_is_one_clear_line_without_the_secret(tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("hello world", encoding="utf-8")
    with start_emulator(EmulatorProfile()) as emu:
        result = _cli("embed", str(corpus), "--out", str(tmp_path / "out"), "--no-progress",
                      env=_env(emu, GIGACHAT_CREDENTIALS="V1JPTkctU0VDUkVULVZBTFVF"))
    assert result.returncode != 0
    assert "V1JPTkctU0VDUkVULVZBTFVF" not in result.stderr + result.stdout
    assert "401" in result.stderr or "credentials" in result.stderr.lower()


def test_exact_tokens_sizes_chunks_by_the_services_own_count(tmp_path: Path) -> None:
    import math
    from dataclasses import replace

    from pipeline import api
    from pipeline.config import load_config

    with start_emulator(EmulatorProfile()) as emu:
        config = load_config(None, env=_env(emu), model="Embeddings")
        config = replace(config, chunking=replace(config.chunking, exact_tokens=True))
        chunks = list(api.chunk_corpus(config, DATA / "ru" / "khleb-na-zakvaske.md"))
        asked = emu.stats()["by_path"].get("/api/v1/tokens/count", 0)
        again = list(api.chunk_corpus(config, DATA / "ru" / "khleb-na-zakvaske.md"))
    assert len(chunks) >= 2 and asked >= 1
    for c in chunks:  # the emulator counts ceil(len/3) + 5 per embedded text; our count is its count
        assert c.token_count == math.ceil(len(c.context + c.text) / 3) + 5 <= 512  # what is embedded, prefix too
    assert [c.chunk_id for c in again] == [c.chunk_id for c in chunks]
