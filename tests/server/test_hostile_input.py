"""Hostile bodies and headers on /v1/predict, /v1/streams and the OIP infer route: always a JSON 4xx,
never a 500, and a refused request never adapts the stream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.server_harness import running_server
from tta_server import Settings

MODEL = "cifar10-airbench"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_server(Settings(default_adapter="tent", min_adapt_batch=2, max_images_per_request=8)) as base:
        yield base


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def oip(url: str, header: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return httpx.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=60)


def fp32(shape: list[int], data: object, **extra: object) -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": shape, "data": data}], **extra}


GOOD = [0.5] * (3 * 32 * 32)


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/v1/predict", b'{"images": ' + deep(100_000) + b"}", {"content-type": "application/json"}),
        ("/v1/streams", b'{"stream_id": "x", "config": ' + deep(100_000) + b"}", {"content-type": "application/json"}),
        (f"/v2/models/{MODEL}/infer", deep(100_000), {"content-type": "application/json"}),
    ],
)
def test_deeply_nested_json_gets_a_4xx(url: str, path: str, body: bytes, headers: dict[str, str]) -> None:
    response = httpx.post(f"{url}{path}", content=body, headers=headers, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ("99999999999999999999,32,32,3", "uint8"),
        ("4611686018427387904,3,32,32", "float32"),
        ("1,32,32,3,1,1,1,1,1,1", "uint8"),
        ("", "uint8"),
        ("-1,32,32,3", "uint8"),
    ],
)
def test_tensor_headers_with_absurd_shapes_get_a_4xx(url: str, shape: str, dtype: str) -> None:
    headers = {"content-type": "application/octet-stream", "x-tensor-shape": shape, "x-tensor-dtype": dtype}
    response = httpx.post(f"{url}/v1/predict", content=b"\x00" * 3072, headers=headers, timeout=60)
    assert response.status_code in (400, 413), response.text
    assert response.json()["error"]["code"] in ("invalid_tensor", "too_many_images")


@pytest.mark.parametrize(
    "header",
    [
        fp32([2**62, 3, 32, 32], GOOD),
        fp32([1, 3, 2**40, 32], GOOD),
        fp32([1, 3, 32, 32], [float("nan")] * 3072),
        fp32([1, 3, 32, 32], [7.0] * 3072),
        fp32([1, 3, 32, 32], [[0.5] * 3071 + ["x"]]),
        fp32([1, 3, 32, 32], [[[0.5]], [0.5, 0.5]]),
        {"inputs": [{"name": "INPUT", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [300] * 3072}]},
        {"inputs": [{"name": "INPUT", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [1.5] * 3072}]},
        {"inputs": [{"name": "INPUT", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [-1] * 3072}]},
        {"inputs": [{"name": "INPUT", "datatype": "UINT8", "shape": [True, 32, 32, 3], "data": [1] * 3072}]},
        {"inputs": [{"name": "INPUT", "datatype": "FP64", "shape": [1, 3, 32, 32], "data": GOOD}]},
        {"inputs": [{"name": "INPUT", "datatype": ["FP32"], "shape": [1, 3, 32, 32], "data": GOOD}]},
        {"inputs": "INPUT"},
        fp32([1, 3, 32, 32], GOOD, parameters="binary"),
        fp32([1, 3, 32, 32], GOOD, parameters={"sequence_id": [1]}),
        fp32([1, 3, 32, 32], GOOD, parameters={"sequence_id": "../../etc"}),
        fp32([1, 3, 32, 32], GOOD, parameters={"sequence_id": "x\x00y"}),
        fp32([1, 3, 32, 32], GOOD, parameters={"sequence_id": 2**70}),
        fp32([1, 3, 32, 32], GOOD, parameters={"binary_data_output": "yes"}),
        fp32([1, 3, 32, 32], GOOD, parameters={"nested": {"a": 1}}),
        fp32([1, 3, 32, 32], GOOD, outputs="PROBABILITIES"),
        fp32([1, 3, 32, 32], GOOD, outputs=[{"name": "NOPE"}]),
        fp32([1, 3, 32, 32], GOOD, outputs=[{"name": "CLASS", "parameters": {"binary_data": 3}}]),
        fp32([1, 3, 32, 32], GOOD, outputs=[]),
        fp32([1, 3, 32, 32], GOOD, id=12),
        b"not json",
        b"\xff\xfe\x00",
    ],
)
def test_malformed_oip_requests_get_a_protocol_4xx_and_never_adapt(url: str, header: dict[str, Any] | bytes) -> None:
    before = httpx.get(f"{url}/v1/streams/default").json().get("steps", 0)
    if isinstance(header, dict):
        header.setdefault("parameters", {})
        if isinstance(header["parameters"], dict):
            header["parameters"].setdefault("sequence_id", "victim")
    response = oip(url, header)
    assert 400 <= response.status_code < 500, response.text
    assert isinstance(response.json()["error"], str)
    assert httpx.get(f"{url}/v1/streams/seq-victim").status_code == 404  # never created, never adapted
    assert httpx.get(f"{url}/v1/streams/default").json().get("steps", 0) == before


@pytest.mark.parametrize("value", ["abc", "-5", "99999999999999999999", "", "1e3"])
def test_bad_header_length_values_get_a_4xx(url: str, value: str) -> None:
    response = oip(url, fp32([1, 3, 32, 32], GOOD), **{"Inference-Header-Content-Length": value})
    assert response.status_code == 400 and isinstance(response.json()["error"], str)


@pytest.mark.parametrize("stream_id", ["../x", "a/b", "x" * 200, ".", "-x", "a b", "%2e%2e"])
def test_hostile_stream_ids_get_400_on_every_edge(url: str, stream_id: str) -> None:
    predict = httpx.post(
        f"{url}/v1/predict",
        content=np.zeros((1, 32, 32, 3), np.uint8).tobytes(),
        headers={
            "content-type": "application/octet-stream",
            "x-tensor-shape": "1,32,32,3",
            "x-tensor-dtype": "uint8",
            "x-stream-id": stream_id,
        },
    )
    assert predict.status_code == 400 and predict.json()["error"]["code"] == "invalid_stream_id", predict.text
    created = httpx.post(f"{url}/v1/streams", json={"stream_id": stream_id})
    assert created.status_code == 400 and created.json()["error"]["code"] == "invalid_stream_id", created.text
    path = httpx.get(f"{url}/v1/streams/{stream_id}")
    assert path.status_code != 500
    if "/" not in stream_id and stream_id != ".":  # clients normalise "." away
        assert path.status_code == 400 and path.json()["error"]["code"] == "invalid_stream_id"


def test_several_stream_headers_are_refused_and_adapt_nothing(url: str) -> None:
    """A balancer may hash the first, the last or the joined X-Stream-Id; the server must not pick one."""
    before = httpx.get(f"{url}/v1/streams").json()
    body = np.zeros((1, 32, 32, 3), np.uint8).tobytes()
    tensor = {"content-type": "application/octet-stream", "x-tensor-shape": "1,32,32,3", "x-tensor-dtype": "uint8"}
    headers = [*tensor.items(), ("x-stream-id", "twin-a"), ("X-Stream-Id", "twin-b")]
    predict = httpx.post(f"{url}/v1/predict", content=body, headers=headers)
    assert predict.status_code == 400 and predict.json()["error"]["code"] == "invalid_stream_id", predict.text
    assert "one X-Stream-Id" in predict.json()["error"]["message"]
    reset = httpx.post(f"{url}/v1/streams/twin-a/reset", headers=headers[3:])
    assert reset.status_code == 400
    assert httpx.get(f"{url}/v1/streams").json() == before


def test_absurd_adapter_configs_are_refused(url: str) -> None:
    for config in ({"optimizer": {"lr": 1e6}}, {"optimizer": {"lr": -1}}, {"optimizer": {"momentum": 5}}):
        response = httpx.post(f"{url}/v1/streams", json={"stream_id": "absurd", "adapter": "tent", "config": config})
        assert response.status_code == 400 and response.json()["error"]["code"] == "adapter_error", response.text


def test_images_that_decode_to_too_many_pixels_together_are_refused_before_decoding() -> None:
    """Small files of huge flat images: each within max_image_pixels, together past
    max_request_pixels, so the request costs a header read per file, not seconds of decoding."""
    import io

    from PIL import Image

    side = 1024
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buffer, "PNG")
    flat = buffer.getvalue()
    assert len(flat) < 16 * 1024  # a few KiB that decode to a million pixels
    settings = Settings(
        default_adapter="tent", min_adapt_batch=2, max_image_pixels=side * side, max_request_pixels=2 * side * side
    )
    with running_server(settings) as base, httpx.Client(base_url=base, timeout=60) as client:

        def send(n: int) -> httpx.Response:
            files = [("files", (f"{i}.png", flat, "image/png")) for i in range(n)]
            return client.post("/v1/predict", files=files, headers={"X-Stream-Id": "flat"})

        refused = send(3)
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "too_many_pixels", refused.text
        assert "image 2" in refused.json()["error"]["message"] and "max_request_pixels=2097152" in refused.text
        assert client.get("/v1/streams/flat").status_code == 404  # refused before the stream was made
        assert send(2).status_code == 200  # within the limit: resized to the model's input and served


def test_a_request_pixel_limit_below_the_image_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="could never be decoded"):
        Settings(max_image_pixels=1000, max_request_pixels=999)
