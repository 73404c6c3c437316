"""Emulator auth: OAuth and /token success and every failure, bearer checks, expiry and forced expiry.

Real HTTP against emulators on 127.0.0.1.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from pipeline.emulator import RunningEmulator

StartEmulator = Callable[..., RunningEmulator]  # the make_emulator fixture


def _oauth(
    http: httpx.Client,
    emu: RunningEmulator,
    *,
    headers: dict[str, str],
    scope: str | None = "GIGACHAT_API_PERS",
) -> httpx.Response:
    return http.post(emu.auth_url, headers=headers, data={} if scope is None else {"scope": scope})


def _good_headers(emu: RunningEmulator) -> dict[str, str]:
    return {"Authorization": f"Basic {emu.credentials}", "RqUID": str(uuid.uuid4())}


def test_oauth_issues_a_token_with_expiry_in_milliseconds(http: httpx.Client, emu: RunningEmulator) -> None:
    before_ms = time.time() * 1000
    response = _oauth(http, emu, headers=_good_headers(emu))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert uuid.UUID(response.headers["x-request-id"]) and uuid.UUID(response.headers["x-session-id"])
    body = response.json()
    assert set(body) == {"access_token", "expires_at"}
    assert body["expires_at"] - before_ms == pytest.approx(1800 * 1000, abs=5000)


@pytest.mark.parametrize("scope", ["GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP"])
def test_oauth_accepts_each_scope(http: httpx.Client, emu: RunningEmulator, scope: str) -> None:
    assert _oauth(http, emu, headers=_good_headers(emu), scope=scope).status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"RqUID": None}, 400, 400),
        ({"RqUID": "not-a-uuid"}, 400, 400),
        ({"Authorization": None}, 401, 4),
        ({"Authorization": "Basic %%%not-base64%%%"}, 401, 4),
        ({"Authorization": "Bearer " + base64.b64encode(b"a:b").decode()}, 401, 4),
        ({"Authorization": "Basic " + base64.b64encode(b"someone:else").decode()}, 401, 6),
    ],
)
def test_oauth_rejects_bad_headers(
    http: httpx.Client, emu: RunningEmulator, change: dict[str, str | None], status: int, code: int
) -> None:
    headers = {k: v for k, v in {**_good_headers(emu), **change}.items() if v is not None}
    response = _oauth(http, emu, headers=headers)
    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.json()["message"]


@pytest.mark.parametrize(("scope", "code"), [(None, 5), ("", 5), ("GIGACHAT_API_NOPE", 1)])
def test_oauth_rejects_bad_scope(
    http: httpx.Client, emu: RunningEmulator, scope: str | None, code: int
) -> None:
    response = _oauth(http, emu, headers=_good_headers(emu), scope=scope)
    assert (response.status_code, response.json()["code"]) == (400, code)


def test_password_token(http: httpx.Client, emu: RunningEmulator) -> None:
    ok = http.post(f"{emu.base_url}/token", auth=(emu.profile.user, emu.profile.password))
    assert ok.status_code == 200 and set(ok.json()) == {"tok", "exp"}
    models = http.get(f"{emu.base_url}/models", headers={"Authorization": f"Bearer {ok.json()['tok']}"})
    assert models.status_code == 200
    wrong = http.post(f"{emu.base_url}/token", auth=(emu.profile.user, "wrong"))
    assert wrong.status_code == 401 and wrong.json()["status"] == 401


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer unknown-token", "Basic abc"])
def test_rest_calls_need_a_valid_bearer(
    http: httpx.Client, emu: RunningEmulator, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = http.get(f"{emu.base_url}/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["status"] == 401 and response.json()["message"]
    assert uuid.UUID(response.headers["x-request-id"])


def test_token_expires_after_its_ttl(
    http: httpx.Client, make_emulator: StartEmulator, get_token: Callable[..., str]
) -> None:
    emu = make_emulator(token_ttl_s=1)
    headers = {"Authorization": f"Bearer {get_token(emu)}"}
    assert http.get(f"{emu.base_url}/models", headers=headers).status_code == 200
    time.sleep(1.1)
    expired = http.get(f"{emu.base_url}/models", headers=headers)
    assert expired.status_code == 401
    assert expired.json() == {"status": 401, "message": "Token has expired"}


def test_admin_expires_every_token_at_once(
    http: httpx.Client, make_emulator: StartEmulator, get_token: Callable[..., str]
) -> None:
    emu = make_emulator()
    tokens = [get_token(emu) for _ in range(3)]
    assert http.post(f"{emu.root_url}/_admin/expire_tokens").json() == {"expired": 3}
    for token in tokens:
        response = http.get(f"{emu.base_url}/models", headers={"Authorization": f"Bearer {token}"})
        assert response.json() == {"status": 401, "message": "Token has expired"}
    fresh = get_token(emu)
    assert http.get(f"{emu.base_url}/models", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    emu.expire_tokens()
    assert http.get(f"{emu.base_url}/models", headers={"Authorization": f"Bearer {fresh}"}).status_code == 401


def test_balance_is_for_prepaid_scopes_only(
    http: httpx.Client, emu: RunningEmulator, get_token: Callable[..., str]
) -> None:
    prepaid = http.get(f"{emu.base_url}/balance", headers={"Authorization": f"Bearer {get_token(emu)}"})
    assert prepaid.status_code == 200
    assert {row["usage"] for row in prepaid.json()["balance"]} == {"GigaChat", "embeddings"}
    corp_token = get_token(emu, "GIGACHAT_API_CORP")
    postpaid = http.get(f"{emu.base_url}/balance", headers={"Authorization": f"Bearer {corp_token}"})
    assert postpaid.status_code == 403 and postpaid.json()["status"] == 403
