"""Emulator serving: HTTPS with a test CA, the subprocess mode, and the `pipeline emulator` command.

Real sockets on 127.0.0.1; TLS is verified against a trustme CA, never switched off.
"""

from __future__ import annotations

import dataclasses
import ssl
import uuid
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from pipeline.emulator import EmulatorProfile, start_emulator, start_emulator_process
from pipeline.emulator.cli import emulator_command


def _token(client: httpx.Client, auth_url: str, credentials: str) -> str:
    response = client.post(
        auth_url,
        headers={"Authorization": f"Basic {credentials}", "RqUID": str(uuid.uuid4())},
        data={"scope": "GIGACHAT_API_B2B"},
    )
    return str(response.json()["access_token"])


@pytest.mark.filterwarnings("ignore:.*verify=<str>.*:DeprecationWarning")
def test_https_with_verification_on(tls_files: tuple[str, str, str]) -> None:
    cert, key, bundle = tls_files
    with start_emulator(tls=(cert, key)) as emu:
        assert emu.root_url.startswith("https://127.0.0.1:")
        with httpx.Client(verify=bundle) as client:
            token = _token(client, emu.auth_url, emu.credentials)
            response = client.post(
                f"{emu.base_url}/embeddings",
                headers={"Authorization": f"Bearer {token}"},
                json={"model": "Embeddings", "input": ["over TLS"]},
            )
            assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 1024
        with pytest.raises(httpx.ConnectError), httpx.Client() as untrusting:  # certifi does not know our CA
            untrusting.get(f"{emu.root_url}/_stats")
        assert emu.stats()["tokens_issued"] == 1


def test_start_emulator_fails_loudly_on_a_bad_certificate(tmp_path: Path) -> None:
    broken = str(tmp_path / "broken.pem")
    with open(broken, "w") as handle:
        handle.write("not a certificate")
    with pytest.raises((RuntimeError, ssl.SSLError)), start_emulator(tls=(broken, broken)):
        pass


def test_emulator_in_a_subprocess(tls_files: tuple[str, str, str]) -> None:
    cert, key, bundle = tls_files
    profile = EmulatorProfile(max_texts_per_request=2, seed=3, credentials="c2VjcmV0OnNlY3JldA==")
    with start_emulator_process(profile, tls=(cert, key)) as emu:
        assert emu.base_url.startswith("https://127.0.0.1:") and emu.base_url.endswith("/api/v1")
        context = ssl.create_default_context(cafile=bundle)
        with httpx.Client(verify=context) as client:
            token = _token(client, emu.auth_url, "c2VjcmV0OnNlY3JldA==")
            response = client.post(
                f"{emu.base_url}/embeddings",
                headers={"Authorization": f"Bearer {token}"},
                json={"model": "Embeddings", "input": ["a", "b", "c"]},
            )
        assert response.status_code == 413  # the profile reached the child
        stats = emu.stats()
        assert stats["tokens_issued"] == 1 and stats["status_counts"] == {"200": 1, "413": 1}
        emu.reset_stats()
        assert emu.stats()["requests"] == 0


def test_cli_has_an_option_for_every_profile_knob() -> None:
    result = CliRunner().invoke(emulator_command, ["--help"])
    assert result.exit_code == 0
    for spec in dataclasses.fields(EmulatorProfile):
        assert f"--{spec.name.replace('_', '-')}" in result.output
    for option in ("--host", "--port", "--tls-cert", "--tls-key"):
        assert option in result.output


def test_cli_args_rebuild_the_profile() -> None:
    profile = EmulatorProfile(rps=12.5, stream_break_after=4, user="u", error_rate=0.1)
    assert profile.cli_args() == [
        "--rps",
        "12.5",
        "--error-rate",
        "0.1",
        "--user",
        "u",
        "--stream-break-after",
        "4",
    ]
    assert EmulatorProfile().cli_args() == []


@pytest.mark.parametrize(
    "args", [["--error-rate", "1.5"], ["--rps", "-1"], ["--tls-cert", __file__], ["--token-ttl-s", "0"]]
)
def test_cli_rejects_bad_options(args: list[str]) -> None:
    result = CliRunner().invoke(emulator_command, args)
    assert result.exit_code == 2
