"""Open Inference Protocol v2 with an unmodified tritonclient, on the real server."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch

from adapters import create_adapter, create_source_model
from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
MODEL = "cifar10-airbench"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_server(Settings(default_adapter="tent", min_adapt_batch=4)) as url:
        yield url


@pytest.fixture
def client(url: str) -> Iterator[object]:
    client = tritonclient_http.InferenceServerClient(url=url.removeprefix("http://"))
    yield client
    client.close()


def images(n: int, seed: int) -> np.ndarray:
    coarse = np.random.default_rng(seed).random((n, 3, 4, 4), dtype=np.float32)
    return coarse.repeat(8, axis=2).repeat(8, axis=3)


def infer(client, batch: np.ndarray, binary: bool = True, **sequence: object) -> np.ndarray:  # type: ignore[no-untyped-def]
    tensor = tritonclient_http.InferInput("INPUT", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [tritonclient_http.InferRequestedOutput("PROBABILITIES", binary_data=binary)]
    result = client.infer(MODEL, [tensor], outputs=outputs, **sequence)
    return result.as_numpy("PROBABILITIES")  # type: ignore[no-any-return]


def test_health_and_metadata(client) -> None:  # type: ignore[no-untyped-def]
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"][0]["shape"] == [-1, 3, 32, 32] and metadata["outputs"][0]["name"] == "PROBABILITIES"


@pytest.mark.parametrize("binary", [True, False])
def test_a_sequence_adapts_like_an_in_process_stream(client, binary: bool) -> None:  # type: ignore[no-untyped-def]
    reference = create_adapter("tent", create_source_model())
    sequence_id = 7 if binary else 8
    for step in range(3):
        batch = images(8, step)
        got = infer(client, batch, binary, sequence_id=sequence_id, sequence_start=step == 0, sequence_end=step == 2)
        want = reference.forward_and_adapt(torch.from_numpy(batch)).softmax(1).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_sequence_end_releases_the_stream_and_start_resets_it(client, url: str) -> None:  # type: ignore[no-untyped-def]
    first = infer(client, images(8, 0), sequence_id=21, sequence_start=True)
    infer(client, images(8, 1), sequence_id=21)
    assert httpx.get(f"{url}/v1/streams/seq-21").json()["steps"] == 2
    again = infer(client, images(8, 0), sequence_id=21, sequence_start=True)
    np.testing.assert_allclose(first, again, atol=1e-6)
    infer(client, images(8, 1), sequence_id=21, sequence_end=True)
    assert httpx.get(f"{url}/v1/streams/seq-21").status_code == 404


def tensor_body(datatype: str, shape: list[int], data: list[object]) -> dict[str, object]:
    return {"inputs": [{"name": "INPUT", "datatype": datatype, "shape": shape, "data": data}]}


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ([0.5] * 3071 + [True], "a boolean"),
        ([0.5] * 3071 + ["0.5"], "a string"),
        ([0.5] * 3071 + [None], "null"),
        ([[[0.5] * 32] * 32] * 2 + [[[0.5] * 32] * 31 + [[0.5] * 31 + [False]]], "a boolean"),  # nested
    ],
)
def test_tensor_data_must_be_json_numbers(url: str, data: list[object], named: str) -> None:
    response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=tensor_body("FP32", [1, 3, 32, 32], data))
    assert response.status_code == 400 and f"must be numbers, got {named}" in response.json()["error"], response.text


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"inputs": []}, 400, "invalid_request"),
        (tensor_body("FP32", [1, 3, 8, 8], [0.0] * 192), 400, "invalid_tensor"),
        (tensor_body("FP32", [1, 3, 32, 32], [0.0] * 5), 400, "invalid_tensor"),
        (tensor_body("BYTES", [1], ["x"]), 400, "invalid_tensor"),
    ],
)
def test_bad_infer_requests_get_a_json_4xx(url: str, body: dict, status: int, code: str) -> None:  # type: ignore[type-arg]
    response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body)
    # the protocol's error body: {"error": "<message>"}
    assert response.status_code == status and isinstance(response.json()["error"], str)
    assert httpx.get(f"{url}/v2/models/other/ready").status_code == 404


def test_an_input_of_another_name_is_refused_not_classified(url: str) -> None:
    body = tensor_body("FP32", [1, 3, 32, 32], [0.5] * 3072)
    body["inputs"][0]["name"] = "input_1"  # type: ignore[index]
    response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "unknown input 'input_1'; this model's input is 'INPUT'"


def test_tritonclient_reads_errors_config_statistics_and_the_repository(client) -> None:  # type: ignore[no-untyped-def]
    from tritonclient.utils import InferenceServerException

    bad = tritonclient_http.InferInput("INPUT", [1, 3, 8, 8], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [bad])
    assert "(N, 3, H, W)" in str(raised.value)  # the protocol's error string, readable by the client
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL and config["input"][0]["dims"] == [3, 32, 32]
    infer(client, images(8, 0))
    stats = client.get_inference_statistics(MODEL)["model_stats"][0]
    assert stats["name"] == MODEL and stats["inference_count"] >= 8 and stats["inference_stats"]["fail"]["count"] >= 1
    index = client.get_model_repository_index()
    assert index == [{"name": MODEL, "version": index[0]["version"], "state": "READY"}]
    with pytest.raises(InferenceServerException, match="not served"):
        client.get_model_config("other")


def test_request_bodies_are_decoded_off_the_event_loop(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON tensor data takes ~170 ms to decode for 256 CIFAR images: on the loop, every other
    request and the health probes waited for it (probe worst case ~300 ms; 85-180 ms off the loop)."""
    import asyncio

    import tta_server.codec.rest as rest
    import tta_server.routes.oip as oip_routes

    on_loop: list[bool] = []

    def where(decode):  # type: ignore[no-untyped-def]
        def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
            try:
                asyncio.get_running_loop()
                on_loop.append(True)
            except RuntimeError:  # no event loop in this thread: a worker
                on_loop.append(False)
            return decode(*args, **kwargs)

        return recorded

    monkeypatch.setattr(oip_routes, "decode_infer", where(oip_routes.decode_infer))
    monkeypatch.setattr(rest, "parse_json", where(rest.parse_json))
    body = tensor_body("FP32", [1, 3, 32, 32], [0.5] * 3072)
    assert httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body).status_code == 200
    images_body = {"images": [base64.b64encode(png(0)).decode()]}
    assert httpx.post(f"{url}/v1/predict", json=images_body).status_code == 200
    assert on_loop == [False, False]
