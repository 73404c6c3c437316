"""Output on object storage: `--out s3://bucket/prefix` against a moto S3 server started here (real HTTP), the
GigaChat emulator embedding: push, search from another machine's cache, an incremental re-run, a failed push,
writers' leases, bad URIs; and a file:// output (a shared mount) through the same sync."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import moto.server as moto_server
import pytest

from pipeline import api
from pipeline.config import ChunkingConfig, load_config
from pipeline.emulator import EmulatorProfile, start_emulator
from pipeline.errors import ConfigError, LockHeldError

BUCKET = "pipeline-test"
SECRET = "wJalrXUtnFEMI-pipeline-test-secret-7f3a"  # must never show in output, reports or remote objects
TOPICS = ["rivers and the cities built on them", "sourdough bread and its starter", "black holes and light",
          "composting kitchen waste at home", "the Trans-Siberian railway", "espresso and milk foam"]


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, Any]]:
    """A moto S3 server on a free loopback port, with one bucket: (endpoint, boto3 client)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key=SECRET)
    client.create_bucket(Bucket=BUCKET)
    try:
        yield endpoint, client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with start_emulator(EmulatorProfile()) as emulator:
        yield emulator


def _corpus(root: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, topic in enumerate(TOPICS):  # one chunk each: "that document's chunks" is exactly one text
        (corpus / f"doc{i}.txt").write_text(f"Document {i} is about {topic}.\n", encoding="utf-8")
    return corpus


def _env(emu: Any, endpoint: str, cache: Path) -> dict[str, str]:
    return {**os.environ, "GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
            "GIGACHAT_CREDENTIALS": emu.credentials, "PIPELINE_CACHE_DIR": str(cache),
            "GIGACHAT_TIMEOUT": "10",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1"}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                            env=env, timeout=120)
    assert SECRET not in result.stdout + result.stderr
    return result


def _embed(env: dict[str, str], command: str, corpus: Path, out: str,
           *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli(env, *extra, command, str(corpus), "--out", out, "--model", "Embeddings", "--no-progress")


def _hits(env: dict[str, str], out: str, query: str) -> list[tuple[str, str, float]]:
    result = _cli(env, "search", query, "-k", "3", "--json", "--out", out)
    assert result.returncode == 0, result.stderr
    return [(h["chunk_id"], h["text"], round(h["score"], 5)) for h in json.loads(result.stdout)["hits"]]


def _remote(client: Any, prefix: str) -> tuple[str | None, set[str]]:
    """The remote CURRENT and the snapshot names under the prefix."""
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])]
    current = next((client.get_object(Bucket=BUCKET, Key=k)["Body"].read().decode().strip()
                    for k in keys if k == f"{prefix}/CURRENT"), None)
    # (pyarrow leaves empty "directory" marker objects such as idx/snapshots/ behind: not snapshots)
    return current, {k.split("/")[2] for k in keys
                     if k.startswith(f"{prefix}/snapshots/") and k.split("/")[2]}


def _deny_current(client: Any, prefix: str) -> None:
    client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{BUCKET}/{prefix}/CURRENT"}]}))


def test_push_search_elsewhere_incremental_and_a_failed_push(tmp_path: Path, s3: tuple[str, Any],
                                                             emu: Any) -> None:
    endpoint, client = s3
    corpus, uri = _corpus(tmp_path), f"s3://{BUCKET}/idx"
    writer = _env(emu, endpoint, tmp_path / "writer-cache")
    reader = _env(emu, endpoint, tmp_path / "reader-cache")  # another machine: nothing cached, no mirror

    first = _embed(writer, "embed", corpus, uri, "-vv")
    assert first.returncode == 0, first.stderr
    live, snapshots = _remote(client, "idx")
    assert live is not None and snapshots == {live}
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key=f"idx/snapshots/{live}/manifest.json")
                          ["Body"].read())
    assert len(manifest["documents"]) == len(TOPICS)
    assert "idx/.lease" not in {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}

    # The same corpus into a local directory (same cache: nothing sent): the remote one searches alike.
    local = load_config(None, env=writer, corpus=corpus, out_dir=tmp_path / "local-out", model="Embeddings")
    assert api.embed(local).exit_code == 0
    query = "which city stands on a river"
    expected = [(h.chunk_id, h.text, round(h.score, 5)) for h in api.search(local, query, k=3).hits]
    assert _hits(reader, uri, query) == expected

    # A re-run from a third machine after one edit: it pulls the live snapshot, sends that document only.
    (corpus / "doc2.txt").write_text("Document 2 is about black holes, light and event horizons.\n",
                                     encoding="utf-8")
    rerun = _env(emu, endpoint, tmp_path / "rerun-cache")
    emu.reset_stats()
    second = _embed(rerun, "reindex", corpus, uri)
    assert second.returncode == 0, second.stderr
    assert emu.stats()["texts_embedded"] == 1
    moved, snapshots = _remote(client, "idx")
    assert moved != live and snapshots == {live, moved}  # the new one and its rollback, as locally
    assert "(+0 ~1 -0 =5)" in second.stdout

    # A push that cannot move CURRENT: the run fails with one line, readers keep the snapshot they had.
    (corpus / "doc2.txt").write_text("Document 2 is about quasars and their jets.\n", encoding="utf-8")
    _deny_current(client, "idx")
    failed = _embed(rerun, "reindex", corpus, uri)
    assert failed.returncode == 1
    assert failed.stderr.count("\n") == 1
    assert f"failed; the remote CURRENT still names {moved}" in failed.stderr
    assert _remote(client, "idx")[0] == moved
    assert "event horizons" in _hits(reader, uri, "quasars black holes")[0][1]

    # The next run pushes: nothing left to embed (the failed run cached it), CURRENT moves past the failure.
    client.delete_bucket_policy(Bucket=BUCKET)
    emu.reset_stats()
    third = _embed(rerun, "reindex", corpus, uri)
    assert third.returncode == 0, third.stderr
    assert emu.stats()["texts_embedded"] == 0
    latest, snapshots = _remote(client, "idx")
    assert latest not in (live, moved) and snapshots == {moved, latest}
    assert "quasars" in _hits(reader, uri, "quasars black holes")[0][1]

    for key in [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]]:
        assert SECRET.encode() not in client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ""):
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_live_lease_of_another_writer_refuses_and_a_lapsed_one_does_not(
        tmp_path: Path, s3: tuple[str, Any], emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, client = s3
    env = _env(emu, endpoint, tmp_path / "cache")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # pyarrow reads them from the process
        monkeypatch.setenv(key, env[key])
    config = load_config(None, env=env, corpus=_corpus(tmp_path), out_dir=f"s3://{BUCKET}/leased",
                         model="Embeddings")
    lease = {"writer": "elsewhere", "host": "another-host", "pid": 4242, "expires_at": time.time() + 600}
    client.put_object(Bucket=BUCKET, Key="leased/.lease", Body=json.dumps(lease).encode())
    with pytest.raises(LockHeldError, match="another-host pid 4242.*one writer per prefix") as held:
        api.embed(config)
    assert held.value.exit_code == 75
    assert _remote(client, "leased") == (None, set())

    lapsed = {**lease, "expires_at": 1.0}
    client.put_object(Bucket=BUCKET, Key="leased/.lease", Body=json.dumps(lapsed).encode())
    assert api.embed(config).exit_code == 0
    assert _remote(client, "leased")[0] is not None
    assert "leased/.lease" not in {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}


@pytest.mark.parametrize(("out", "says"), [
    ("s3://", "bucket"),
    ("s3:/pipeline-test/idx", "did you mean s3://pipeline-test/idx"),
    ("s3://AKIA:" + SECRET + "@pipeline-test/idx", "credentials in the URI"),
    ("ftp://host/idx", "unsupported scheme"),
    ("s3://no-such-bucket/idx", "bucket 'no-such-bucket' does not exist"),
], ids=["no-bucket", "one-slash", "credentials", "scheme", "missing-bucket"])
def test_a_bad_uri_or_a_missing_bucket_is_one_line_exit_2(tmp_path: Path, s3: tuple[str, Any], emu: Any,
                                                          out: str, says: str) -> None:
    env = _env(emu, s3[0], tmp_path / "cache")
    result = _embed(env, "embed", _corpus(tmp_path), out)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --out") and result.stderr.count("\n") == 1
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_uri_is_a_shared_mount_synced_the_same_way(tmp_path: Path, emu: Any) -> None:
    corpus, shared = _corpus(tmp_path), tmp_path / "nfs" / "idx"
    env = {"GIGACHAT_BASE_URL": emu.base_url, "GIGACHAT_AUTH_URL": emu.auth_url,
           "GIGACHAT_CREDENTIALS": emu.credentials, "GIGACHAT_TIMEOUT": "10"}
    writer = load_config(None, env={**env, "PIPELINE_CACHE_DIR": str(tmp_path / "a"), "PIPELINE_CONTEXTUAL": "1"},
                         corpus=corpus, out_dir=f"file://{shared}", model="Embeddings")
    report = api.embed(writer)
    assert report.exit_code == 0 and report.out_dir == f"file://{shared}"
    assert (shared / "CURRENT").read_text().strip() == Path(report.snapshot).name
    assert not (shared / ".lease").exists()
    reader = load_config(None, env={**env, "PIPELINE_CACHE_DIR": str(tmp_path / "b")},
                         out_dir=f"file://{shared}")
    hits = api.search(reader, "bread starter", k=1).hits
    assert hits[0].source_path == "doc1.txt"
    assert (tmp_path / "b" / "remote").is_dir()  # searched from the reader's own copy, pulled from the mount

    # Another machine, [chunking] contextual unset: it follows the remote index's setting (read before any
    # pull), so the run updates that index instead of refusing it as built with other settings.
    again = api.embed(replace(writer.with_overrides(cache_dir=tmp_path / "c"), chunking=ChunkingConfig()
                              ).with_out(f"file://{shared}"))
    assert again.exit_code == 0 and again.diff["unchanged"] == len(TOPICS)
    manifest = json.loads((shared / "snapshots" / Path(again.snapshot).name / "manifest.json").read_text())
    assert manifest["fingerprint"]["chunking"]["contextual"] is True


def test_a_uri_from_the_config_file_or_environment_and_its_mirror(tmp_path: Path) -> None:
    run_toml = tmp_path / "run.toml"
    run_toml.write_text('out_dir = "s3://Bad_Bucket/idx"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{run_toml}: out_dir s3://Bad_Bucket/idx: expected s3://bucket/"):
        load_config(run_toml, env={})
    env = {"PIPELINE_OUT_DIR": "s3://bkt/team/idx/", "PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    config = load_config(None, env=env)
    assert config.out_uri == "s3://bkt/team/idx" and config.out_label == config.out_uri
    assert config.out_dir.parent == tmp_path / "cache" / "remote"
    elsewhere = load_config(None, env={**env, "AWS_ENDPOINT_URL": "http://minio.internal:9000"})
    assert elsewhere.storage.endpoint_url == "http://minio.internal:9000"
    assert elsewhere.out_dir != config.out_dir  # another server's bucket of that name is other data
    with pytest.raises(ConfigError, match="without credentials"):
        load_config(None, env={**env, "AWS_ENDPOINT_URL": "http://user:pw@minio.internal:9000"})
    local = config.with_out(tmp_path / "local")
    assert local.out_uri == "" and local.out_dir == tmp_path / "local"
