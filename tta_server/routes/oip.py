"""Open Inference Protocol v2 (KServe / Triton HTTP): model metadata, readiness and inference.

``POST /v2/models/{name}/infer`` takes one input tensor, ``INPUT``: FP32 (N, 3, H, W) in [0, 1]
or UINT8 (N, H, W, 3), as JSON ``data`` or with the binary-data extension
(``Inference-Header-Content-Length``). It returns ``PROBABILITIES`` FP32 (N, C) and ``CLASS``
INT64 (N,), as JSON or binary when asked. The sequence parameters map onto streams, as Triton's
sequence batcher does with correlation ids: ``sequence_id`` names the stream (``seq-<id>``),
``sequence_start`` starts it afresh and ``sequence_end`` releases it after the request. Without a
``sequence_id`` the request runs on the default stream.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from tta_server.errors import ApiError
from tta_server.settings import Settings
from tta_server.streams import StreamManager, UnknownStreamError

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
HEADER_LENGTH = "inference-header-content-length"
DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1"), "INT64": np.dtype("<i8")}


def _model(request: Request, name: str) -> None:
    settings: Settings = request.app.state.settings
    if name != settings.model:
        raise ApiError(404, "unknown_model", f"model {name!r} is not served; this server serves {settings.model!r}")


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "tta-server", "version": "0.1.0", "extensions": ["binary_tensor_data", "sequence"]}


@router.get("/models/{name}")
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    _model(request, name)
    source = request.app.state.source
    height, width = source.preprocessing.input_size
    return {
        "name": name,
        "versions": [source.model_id],
        "platform": "pytorch",
        "inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [-1, 3, height, width]}],
        "outputs": [
            {"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, len(source.class_names)]},
            {"name": "CLASS", "datatype": "INT64", "shape": [-1]},
        ],
    }


@router.get("/models/{name}/ready")
async def model_ready(request: Request, name: str) -> Response:
    _model(request, name)
    return Response(status_code=200 if request.app.state.ready else 503)


def _parse(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    split = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ApiError(400, "invalid_request", f"Inference-Header-Content-Length {header_length!r} does not fit")
        split = int(header_length)
    try:
        header = json.loads(body[:split])
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"the request header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ApiError(400, "invalid_request", "the request header must be a JSON object")
    return header, body[split:]


def _input_tensor(header: dict[str, Any], binary: bytes, size: tuple[int, int]) -> torch.Tensor:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, "invalid_request", "expected exactly one input tensor, INPUT")
    spec = inputs[0]
    dtype, shape = spec.get("datatype"), spec.get("shape")
    if dtype not in ("FP32", "UINT8") or not isinstance(shape, list) or not all(isinstance(s, int) for s in shape):
        raise ApiError(400, "invalid_input", f"INPUT must be FP32 or UINT8 with an integer shape, got {dtype} {shape}")
    height, width = size
    expected = [shape[0], 3, height, width] if dtype == "FP32" else [shape[0], height, width, 3]
    if len(shape) != 4 or shape != expected or shape[0] < 1:
        layout = "(N, 3, H, W)" if dtype == "FP32" else "(N, H, W, 3)"
        raise ApiError(
            400, "invalid_input", f"{dtype} INPUT must be {layout} with H, W = {height}, {width}; got {shape}"
        )
    count = int(np.prod(shape))
    size_param = (spec.get("parameters") or {}).get("binary_data_size")
    try:
        if size_param is not None:
            if size_param != len(binary) or len(binary) != count * DTYPES[dtype].itemsize:
                raise ApiError(400, "invalid_input", f"binary INPUT is {len(binary)} bytes; shape {shape} needs more")
            array = np.frombuffer(binary, dtype=DTYPES[dtype]).reshape(shape)
        else:
            array = np.asarray(spec.get("data"), dtype=DTYPES[dtype]).reshape(shape)
    except (ValueError, TypeError) as exc:
        raise ApiError(400, "invalid_input", f"INPUT data does not match shape {shape}: {exc}") from exc
    if dtype == "UINT8":
        return torch.from_numpy(array.copy()).permute(0, 3, 1, 2).float().div_(255)
    return torch.from_numpy(array.astype(np.float32))


@router.post("/models/{name}/infer")
async def infer(request: Request, name: str) -> Response:
    _model(request, name)
    settings: Settings = request.app.state.settings
    body = await request.body()
    if len(body) > settings.max_request_bytes:
        raise ApiError(413, "request_too_large", f"body exceeds max_request_bytes={settings.max_request_bytes}")
    header, binary = _parse(body, request.headers.get(HEADER_LENGTH))
    batch = _input_tensor(header, binary, request.app.state.source.preprocessing.input_size)
    if batch.shape[0] > settings.max_images_per_request:
        raise ApiError(413, "too_many_images", f"{batch.shape[0]} images; max={settings.max_images_per_request}")
    parameters = header.get("parameters") or {}
    streams: StreamManager = request.app.state.streams
    sequence = parameters.get("sequence_id")
    stream_id = f"seq-{sequence}" if sequence not in (None, 0, "") else settings.default_stream
    if sequence not in (None, 0, "") and parameters.get("sequence_start"):
        with contextlib.suppress(UnknownStreamError):
            await streams.delete(stream_id)  # a new sequence starts from the source
    logits, _, _ = await streams.step(stream_id, batch)
    if sequence not in (None, 0, "") and parameters.get("sequence_end"):
        await streams.delete(stream_id)
    probabilities = logits.float().softmax(1).numpy().astype("<f4")
    classes = probabilities.argmax(1).astype("<i8")
    tensors = {"PROBABILITIES": ("FP32", probabilities), "CLASS": ("INT64", classes)}
    requested = header.get("outputs") or [{"name": n} for n in tensors]
    binary_default = bool(parameters.get("binary_data_output", False))
    outputs, chunks = [], []
    for wanted in requested:
        if wanted.get("name") not in tensors:
            raise ApiError(400, "invalid_request", f"unknown output {wanted.get('name')!r}; outputs: {list(tensors)}")
        datatype, array = tensors[wanted["name"]]
        entry: dict[str, Any] = {"name": wanted["name"], "datatype": datatype, "shape": list(array.shape)}
        if (wanted.get("parameters") or {}).get("binary_data", binary_default):
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    response = {"model_name": name, "model_version": request.app.state.source.model_id, "outputs": outputs}
    if "id" in header:
        response["id"] = header["id"]
    if not chunks:
        return JSONResponse(response)
    encoded = json.dumps(response).encode()
    return Response(
        encoded + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(encoded))},
    )
