"""Optional bearer tokens, on the real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.server_harness import running_server
from tests.test_server import png
from tta_server import Settings


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = Settings(default_adapter="norm", min_adapt_batch=2, api_tokens=["user-token"], admin_tokens=["admin"])
    with running_server(settings) as url:
        yield url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_stays_open(url: str) -> None:
    assert httpx.get(f"{url}/health/ready").status_code == 200
    assert httpx.get(f"{url}/v2/health/live").status_code == 200


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Basic dXNlcjpwdw=="}])
def test_requests_without_a_valid_token_get_401(url: str, headers: dict[str, str]) -> None:
    response = httpx.post(f"{url}/v1/predict", files=[("files", ("a.png", png(0), "image/png"))], headers=headers)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{url}/v1/streams", headers=headers).status_code == 401


def test_user_tokens_predict_and_read_but_do_not_change_streams(url: str) -> None:
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(2)]
    assert httpx.post(f"{url}/v1/predict", files=files, headers=bearer("user-token")).status_code == 200
    assert httpx.get(f"{url}/v1/streams", headers=bearer("user-token")).status_code == 200
    refused = httpx.post(f"{url}/v1/streams", json={"stream_id": "s"}, headers=bearer("user-token"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert httpx.post(f"{url}/v1/streams/default/reset", headers=bearer("user-token")).status_code == 403


def test_admin_tokens_change_streams(url: str) -> None:
    created = httpx.post(f"{url}/v1/streams", json={"stream_id": "s"}, headers=bearer("admin"))
    assert created.status_code == 201
    assert httpx.delete(f"{url}/v1/streams/s", headers=bearer("admin")).status_code == 204
