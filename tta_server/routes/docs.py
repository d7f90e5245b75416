"""OpenAPI descriptions shared by the routes: the error body, every error status, raw bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class OipErrorBody(BaseModel):
    error: str


def _errors(model: type[BaseModel], statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model, "description": text} for status, text in statuses.items()}


COMMON = {
    400: "malformed input (invalid stream id, JSON, tensor or header)",
    401: "missing or unknown bearer token",
    403: "the token may not change streams",
    404: "unknown stream",
    408: "the body stalled",
    409: "conflict (stream exists, snapshot damaged or for another config)",
    413: "body or image count over the limits, or a step larger than the whole memory budget",
    415: "unsupported content type",
    422: "invalid request, image or config, or a diverged step (undone)",
    503: "retry later (Retry-After): overloaded (bodies in flight), stream limit, memory budget, stream on another "
    "replica, undeletable snapshot",
}
ERRORS = _errors(ErrorBody, COMMON)
OIP_ERRORS = _errors(OipErrorBody, COMMON)

PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {"images": {"type": "array", "items": {"type": "string", "format": "byte"}}},
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "a raw tensor: uint8 (N, H, W, 3) or float32 (N, 3, H, W) in [0, 1], little-endian, "
                "described by the X-Tensor-Shape and X-Tensor-Dtype headers",
            },
        },
    },
    "parameters": [
        {
            "name": "X-Tensor-Shape",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "raw tensor bodies: comma-separated shape, e.g. 8,32,32,3",
        },
        {
            "name": "X-Tensor-Dtype",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "enum": ["uint8", "float32"]},
            "description": "raw tensor bodies: dtype",
        },
        {
            "name": "X-Request-Id",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "echoed in the response and the access log (generated when absent)",
        },
    ],
}
