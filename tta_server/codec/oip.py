"""Open Inference Protocol v2 inference bodies: JSON, or JSON plus binary tensor data.

Everything in a request (header split, input, parameters, requested outputs, id) is validated
before the stream is touched, so a refused request never adapts the stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tta_server.codec import tensors
from tta_server.codec.errors import ApiError
from tta_server.codec.jsonbody import parse_json

OIP_DTYPES: dict[str, tensors.TensorDtype] = {"UINT8": "uint8", "FP32": "float32"}
INPUT = "INPUT"  # the one input the model metadata declares
OUTPUTS = ("PROBABILITIES", "CLASS")
SCALAR = str | int | float | bool


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


@dataclass
class InferRequest:
    batch: torch.Tensor
    parameters: dict[str, Any]
    outputs: list[tuple[str, bool]]  # (name, as binary)
    request_id: str | None = None
    sequence: dict[str, Any] = field(default_factory=dict)


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, SCALAR) for v in value.values()):
        raise _invalid(f"{where} parameters must be an object of strings, numbers and booleans")
    return value


def _flag(parameters: dict[str, Any], key: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise _invalid(f"parameter {key} must be a boolean, got {str(value)[:40]!r}")
    return value


def decode_infer(body: bytes, header_length: str | None, size: tuple[int, int], max_images: int) -> InferRequest:
    split = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise _invalid(f"Inference-Header-Content-Length {header_length[:40]!r} does not fit the body")
        split = int(header_length)
    header = parse_json(body[:split], "the inference request header")
    if not isinstance(header, dict):
        raise _invalid("the inference request header must be a JSON object")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _invalid("id must be a string")
    parameters = _parameters(header.get("parameters"), "request")
    binary_default = _flag(parameters, "binary_data_output")
    for key in ("sequence_start", "sequence_end"):
        _flag(parameters, key)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _invalid(f"expected exactly one input tensor, {INPUT}")
    spec = inputs[0]
    if spec.get("name") != INPUT:  # a tensor meant for another model is not silently classified
        raise _invalid(f"unknown input {str(spec.get('name'))[:40]!r}; this model's input is {INPUT!r}")
    dtype = tensors.parse_dtype(spec.get("datatype"), OIP_DTYPES)
    shape = tensors.check_shape(spec.get("shape"), dtype, size, max_images)
    input_parameters = _parameters(spec.get("parameters"), "input")
    binary_size = input_parameters.get("binary_data_size")
    if binary_size is not None:
        if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size != len(body) - split:
            raise _invalid(f"binary_data_size {binary_size!r} does not match the {len(body) - split} bytes sent")
        batch = tensors.from_bytes(body[split:], dtype, shape)
    elif "data" in spec:
        batch = tensors.from_values(spec["data"], dtype, shape)
    else:
        raise _invalid(f"{INPUT} needs data, or binary data with parameters.binary_data_size")
    return InferRequest(batch, parameters, _outputs(header.get("outputs"), binary_default), request_id)


def _outputs(requested: object, binary_default: bool) -> list[tuple[str, bool]]:
    if requested is None:
        return [(name, binary_default) for name in OUTPUTS]
    if not isinstance(requested, list) or not requested:
        raise _invalid(f"outputs must be a non-empty list of {{'name': ...}} objects; outputs: {list(OUTPUTS)}")
    chosen = []
    for wanted in requested:
        name = wanted.get("name") if isinstance(wanted, dict) else None
        if name not in OUTPUTS:
            raise _invalid(f"unknown output {str(name)[:40]!r}; outputs: {list(OUTPUTS)}")
        chosen.append(
            (str(name), _flag(_parameters(wanted.get("parameters"), "output"), "binary_data", binary_default))
        )
    return chosen


def encode_infer(
    request: InferRequest,
    probabilities: np.ndarray[Any, Any],
    model_name: str,
    model_version: str,
    parameters: dict[str, object] | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    arrays = {
        "PROBABILITIES": ("FP32", probabilities.astype("<f4")),
        "CLASS": ("INT64", probabilities.argmax(1).astype("<i8")),
    }
    outputs, chunks = [], []
    for name, binary in request.outputs:
        datatype, array = arrays[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.request_id is not None:
        response["id"] = request.request_id
    if parameters:
        response["parameters"] = parameters
    encoded = json.dumps(response).encode()
    return (encoded + b"".join(chunks), len(encoded)) if chunks else (encoded, None)
