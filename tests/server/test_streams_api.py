"""Streams as resources and the adapter catalogue, on the real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from adapters import list_adapters
from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    settings = Settings(default_adapter="norm", min_adapt_batch=4, max_streams=3)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def predict(client: httpx.Client, stream_id: str, n: int = 4) -> httpx.Response:
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(n)]
    return client.post("/v1/predict", files=files, headers={"X-Stream-Id": stream_id})


def test_adapters_are_listed_with_schemas_and_artefacts(client: httpx.Client) -> None:
    listed = {entry["name"]: entry for entry in client.get("/v1/adapters").json()}
    assert set(listed) == set(list_adapters())
    assert "ema_alpha" in listed["cotta"]["config_schema"]["properties"]
    assert listed["petal"]["artefacts"] == {"petal_swag": True}
    assert listed["rmt"]["paper"].startswith("Döbler")


def test_stream_lifecycle(client: httpx.Client) -> None:
    created = client.post("/v1/streams", json={"stream_id": "cam-1", "adapter": "tent", "config": {"seed": 3}})
    assert created.status_code == 201, created.text
    assert created.json()["adapter"] == "tent" and created.json()["config"]["seed"] == 3
    assert client.post("/v1/streams", json={"stream_id": "cam-1"}).json()["error"]["code"] == "stream_exists"
    answer = predict(client, "cam-1")
    assert answer.status_code == 200 and answer.json()["adapter"] == "tent" and answer.json()["step"] == 1
    info = client.get("/v1/streams/cam-1").json()
    assert info["steps"] == 1 and info["state_bytes"] > 0 and "mean_entropy" in info["signals"]
    assert "cam-1" in [s["stream_id"] for s in client.get("/v1/streams").json()]
    reset = client.post("/v1/streams/cam-1/reset").json()
    assert reset["steps"] == 0
    assert client.delete("/v1/streams/cam-1").status_code == 204
    missing = client.get("/v1/streams/cam-1")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_stream"


def test_streams_created_on_first_use_take_the_default_adapter(client: httpx.Client) -> None:
    assert predict(client, "implicit").json()["adapter"] == "norm"
    assert client.get("/v1/streams/implicit").json()["adapter"] == "norm"
    client.delete("/v1/streams/implicit")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"stream_id": "x", "adapter": "nope"}, 422, "unknown_adapter"),
        ({"stream_id": "x", "adapter": "tent", "config": {"optimizer": {"lr": -1}}}, 400, "adapter_error"),
        ({"stream_id": "bad id with spaces"}, 400, "invalid_stream_id"),
        ({"adapter": "tent"}, 422, "invalid_request"),
        ({"stream_id": "x", "adaptor": "cotta"}, 422, "invalid_request"),  # a typo is no silent default
        # NaN and 1e999 (infinity) are numbers to Python's JSON parser, not to a config
        (b'{"stream_id": "x", "adapter": "cotta", "config": {"augment": {"noise_std": 1e999}}}', 400, "adapter_error"),
        (
            b'{"stream_id": "x", "guard": {"thresholds": [{"signal": "majority_share", "above": NaN}]}}',
            422,
            "invalid_guard",
        ),
    ],
)
def test_bad_stream_requests_get_a_json_4xx(client: httpx.Client, body: dict | bytes, status: int, code: str) -> None:  # type: ignore[type-arg]
    if isinstance(body, bytes):  # what a JSON encoder would refuse to write
        response = client.post("/v1/streams", content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post("/v1/streams", json=body)
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert client.get("/v1/streams/x").status_code == 404  # nothing half-created


def test_stream_limit_answers_503_with_retry_after(client: httpx.Client) -> None:
    for i in range(3):
        assert client.post("/v1/streams", json={"stream_id": f"full-{i}"}).status_code == 201
    refused = client.post("/v1/streams", json={"stream_id": "one-too-many"})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "30"
    for i in range(3):
        client.delete(f"/v1/streams/full-{i}")
