"""The minimal server: real uvicorn on loopback, real images, the bundled model."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.data.cifar10 import load_cifar10
from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    settings = Settings(default_adapter="tent", max_images_per_request=8, max_image_pixels=512 * 512, min_adapt_batch=4)
    with running_server(settings) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def test_health_routes(client: httpx.Client) -> None:
    assert client.get("/health/live").json() == {"status": "live", "model": None}
    ready = client.get("/v2/health/ready").json()
    assert ready["status"] == "ready" and ready["model"].startswith("cifar10-airbench@")


def test_predict_multipart_on_the_default_stream(client: httpx.Client) -> None:
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(4)]
    body = client.post("/v1/predict", files=files).json()
    assert body["stream_id"] == "default" and body["adapter"] == "tent" and body["step"] >= 1
    assert len(body["predictions"]) == 4
    first = body["predictions"][0]
    assert 0 <= first["class_index"] < 10 and first["label"] in first["top_k"]
    assert abs(first["confidence"] - max(first["top_k"].values())) < 1e-6 and len(first["top_k"]) == 5


def test_each_stream_counts_its_own_steps(client: httpx.Client) -> None:
    images = {"images": [base64.b64encode(png(i)).decode() for i in range(4)]}
    steps = [
        client.post("/v1/predict", json=images, headers={"X-Stream-Id": "camera-7"}).json()["step"] for _ in range(2)
    ]
    assert steps == [1, 2]
    assert client.post("/v1/predict", json=images, headers={"X-Stream-Id": "camera-8"}).json()["step"] == 1


def test_small_requests_are_buffered_until_min_adapt_batch(client: httpx.Client) -> None:
    headers = {"X-Stream-Id": "small"}
    images = {"images": [base64.b64encode(png(i)).decode() for i in range(3)]}
    steps = [client.post("/v1/predict", json=images, headers=headers).json()["step"] for _ in range(4)]
    assert steps == [0, 1, 1, 2]  # 3 buffered, 6 -> adapt on them, 3, 6 -> adapt


def test_other_image_sizes_are_resized(client: httpx.Client) -> None:
    """A 100x60 image is answered as the model's bilinear 32x32 resize of it."""
    import io

    from PIL import Image

    from adapters import create_adapter, create_source_model

    assert client.post("/v1/streams", json={"stream_id": "resized", "adapter": "source"}).status_code == 201
    payload = png(1, (100, 60))
    response = client.post(
        "/v1/predict", files=[("files", ("big.png", payload, "image/png"))], headers={"X-Stream-Id": "resized"}
    )
    assert response.status_code == 200
    source = create_source_model()
    small = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    x = torch.from_numpy(small.copy()).permute(2, 0, 1)[None].float() / 255
    expected = create_adapter("source", source).forward_and_adapt(x).softmax(1)[0]
    got = response.json()["predictions"][0]["top_k"]
    assert got and all(abs(p - float(expected[source.class_names.index(name)])) < 1e-4 for name, p in got.items())


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "fragment"),
    [
        ({"files": [("files", ("x.png", b"not an image", "image/png"))]}, 422, "invalid_image", "image 0 (x.png)"),
        ({"json": {"images": ["%%%"]}}, 422, "invalid_image", "base64"),
        ({"json": {"pictures": []}}, 422, "invalid_request", "images"),
        ({"content": b"raw", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type", "multipart"),
        (
            {"files": [("files", (f"{i}.png", png(i), "image/png")) for i in range(9)]},
            413,
            "too_many_images",
            "max_images_per_request=8",
        ),
        (
            {"files": [("files", ("huge.png", png(0, (1024, 1024)), "image/png"))]},
            422,
            "invalid_image",
            "max_image_pixels=262144",
        ),
    ],
)
def test_bad_input_gets_a_json_4xx(client: httpx.Client, kwargs: dict, status: int, code: str, fragment: str) -> None:  # type: ignore[type-arg]
    response = client.post("/v1/predict", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and fragment in error["message"]


def test_a_bad_request_leaves_the_stream_state_alone(client: httpx.Client) -> None:
    headers = {"X-Stream-Id": "kept"}
    good = [("files", (f"{i}.png", png(i), "image/png")) for i in range(4)]
    assert client.post("/v1/predict", files=good, headers=headers).json()["step"] == 1
    client.post("/v1/predict", files=[("files", ("bad.png", b"junk", "image/png"))], headers=headers)
    assert client.post("/v1/predict", files=good, headers=headers).json()["step"] == 2


def test_openapi_documents_the_predict_route(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)


def test_single_image_requests_are_classified_well(shared_cifar10: Path) -> None:
    # Batch statistics of one image are meaningless; the stream's recent images give the context.
    test = load_cifar10(shared_cifar10, "test")
    order = np.random.default_rng(0).permutation(len(test))[:48]
    correct, steps = 0, []
    with running_server(Settings(default_adapter="tent")) as url, httpx.Client(base_url=url, timeout=60) as client:
        for index in order:
            buffer = io.BytesIO()
            Image.fromarray(test.images[index]).save(buffer, format="PNG")
            body = client.post("/v1/predict", files=[("files", ("x.png", buffer.getvalue(), "image/png"))]).json()
            correct += body["predictions"][0]["class_index"] == test.labels[index]
            steps.append(body["step"])
    assert steps[14] == 0 and steps[15] == 1 and steps[-1] == 3  # adapts once per 16 buffered images
    assert correct / len(order) >= 0.75
