"""Optional bearer tokens, on the real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import png
from tests.server_harness import running_server
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


ROUTES = [
    ("GET", "/v1/streams", "api"),
    ("GET", "/v1/memory", "api"),
    ("GET", "/v1/persistence", "api"),
    ("GET", "/v1/adapters", "api"),
    ("GET", "/v2", "api"),
    ("GET", "/v2/models/cifar10-airbench", "api"),
    ("GET", "/v2/models/cifar10-airbench/config", "api"),
    ("GET", "/v2/models/cifar10-airbench/stats", "api"),
    ("POST", "/v2/repository/index", "api"),
    ("POST", "/v1/streams/matrix/reset", "admin"),
    ("POST", "/v1/streams/matrix/snapshot", "admin"),
    ("POST", "/v1/streams/matrix/restore", "admin"),
    ("DELETE", "/v1/streams/matrix", "admin"),
]


@pytest.mark.parametrize(("method", "path", "needs"), ROUTES)
def test_the_auth_matrix(url: str, method: str, path: str, needs: str) -> None:
    httpx.post(f"{url}/v1/streams", json={"stream_id": "matrix"}, headers=bearer("admin"))
    assert httpx.request(method, f"{url}{path}").status_code == 401
    user = httpx.request(method, f"{url}{path}", headers=bearer("user-token")).status_code
    assert (user == 403) == (needs == "admin"), (method, path, user)
    assert httpx.request(method, f"{url}{path}", headers=bearer("admin")).status_code not in (401, 403)


def oip_sequence(url: str, token: str, **parameters: object) -> httpx.Response:
    body = {
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2, 3, 32, 32], "data": [0.5] * 6144}],
        "parameters": {"sequence_id": 99, **parameters},
    }
    return httpx.post(f"{url}/v2/models/cifar10-airbench/infer", json=body, headers=bearer(token), timeout=60)


def test_oip_sequence_start_and_end_need_an_admin_token(url: str) -> None:
    assert oip_sequence(url, "user-token").status_code == 200  # plain inference on a sequence is allowed
    for flag in ("sequence_start", "sequence_end"):
        refused = oip_sequence(url, "user-token", **{flag: True})
        assert refused.status_code == 403 and "admin" in refused.json()["error"]
    steps = httpx.get(f"{url}/v1/streams/seq-99", headers=bearer("user-token")).json()["steps"]
    assert steps == 1  # the refused requests neither reset nor adapted the stream
    assert oip_sequence(url, "admin", sequence_end=True).status_code == 200
    assert httpx.get(f"{url}/v1/streams/seq-99", headers=bearer("admin")).status_code == 404
