"""``POST /v1/predict``: classify images on a stream, then adapt that stream on them."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from typing import Annotated

import torch
from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from adapters import Preprocessing
from tta_server.errors import ApiError
from tta_server.images import ImageDecodeError, decode_image
from tta_server.settings import Settings
from tta_server.tensors import TensorError, decode_tensor

router = APIRouter(prefix="/v1", tags=["predict"])


class Prediction(BaseModel):
    class_index: int
    label: str
    confidence: float
    top_k: dict[str, float] = Field(description="the top-k labels and their probabilities")


class PredictResponse(BaseModel):
    request_id: str
    stream_id: str
    adapter: str
    step: int = Field(description="the stream's adaptation step count after this request")
    predictions: list[Prediction]


class Base64Images(BaseModel):
    images: list[str] = Field(description="base64-encoded image files (PNG, JPEG, ...)", min_length=1)


def _decode_batch(payloads: list[tuple[str, bytes]], preprocessing: Preprocessing, max_pixels: int) -> torch.Tensor:
    return torch.stack([decode_image(data, label, preprocessing, max_pixels) for label, data in payloads])


async def _read_tensor(request: Request, settings: Settings, size: tuple[int, int]) -> torch.Tensor:
    body = await request.body()
    if len(body) > settings.max_request_bytes:
        raise ApiError(413, "request_too_large", f"body exceeds max_request_bytes={settings.max_request_bytes}")
    try:
        batch = decode_tensor(body, request.headers.get("x-tensor-shape"), request.headers.get("x-tensor-dtype"), size)
    except TensorError as exc:
        raise ApiError(422, "invalid_tensor", str(exc)) from exc
    if batch.shape[0] > settings.max_images_per_request:
        raise ApiError(
            413, "too_many_images", f"{batch.shape[0]} images; max_images_per_request={settings.max_images_per_request}"
        )
    return batch


async def _read_payloads(request: Request, settings: Settings) -> list[tuple[str, bytes]]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_request_bytes:
        raise ApiError(
            413, "request_too_large", f"request is {declared} bytes; max_request_bytes={settings.max_request_bytes}"
        )
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(
            max_files=settings.max_images_per_request + 1, max_part_size=settings.max_request_bytes
        )
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        payloads = [(f"image {i} ({f.filename})", await f.read()) for i, f in enumerate(files)]
    elif content_type.startswith("application/json"):
        body = await request.body()
        if len(body) > settings.max_request_bytes:
            raise ApiError(413, "request_too_large", f"body exceeds max_request_bytes={settings.max_request_bytes}")
        try:
            parsed = Base64Images.model_validate(json.loads(body))
        except (ValueError, TypeError) as exc:
            raise ApiError(422, "invalid_request", f'expected {{"images": ["<base64>", ...]}}: {exc}') from exc
        payloads = []
        for i, text in enumerate(parsed.images):
            try:
                payloads.append((f"image {i}", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise ApiError(422, "invalid_image", f"image {i}: not valid base64 ({exc})") from exc
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f'content-type {content_type or "missing"}; send multipart/form-data files, JSON {{"images": [base64]}} '
            "or application/octet-stream with X-Tensor-Shape and X-Tensor-Dtype",
        )
    if not payloads:
        raise ApiError(422, "no_images", "the request holds no images")
    if len(payloads) > settings.max_images_per_request:
        raise ApiError(
            413, "too_many_images", f"{len(payloads)} images; max_images_per_request={settings.max_images_per_request}"
        )
    return payloads


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    }
                },
                "application/json": {"schema": Base64Images.model_json_schema()},
            }
        }
    },
)
async def predict(
    request: Request, x_stream_id: Annotated[str | None, Header(max_length=128)] = None
) -> PredictResponse:
    """Predict every image (before the update, as the adapter's paper does), then adapt the stream."""
    settings: Settings = request.app.state.settings
    source = request.app.state.source
    if request.headers.get("content-type", "").startswith("application/octet-stream"):
        batch = await _read_tensor(request, settings, source.preprocessing.input_size)
    else:
        payloads = await _read_payloads(request, settings)
        try:
            # Decoding is CPU work: keep it off the event loop.
            batch = await asyncio.to_thread(_decode_batch, payloads, source.preprocessing, settings.max_image_pixels)
        except ImageDecodeError as exc:
            raise ApiError(422, "invalid_image", str(exc)) from exc
    stream_id = x_stream_id or settings.default_stream
    logits, step, adapter_name = await request.app.state.streams.step(stream_id, batch)
    probs = logits.float().softmax(1)
    k = min(settings.top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    names = source.class_names
    predictions = [
        Prediction(
            class_index=int(idx[0]),
            label=names[int(idx[0])],
            confidence=float(p[0]),
            top_k={names[int(j)]: float(q) for q, j in zip(p, idx, strict=True)},
        )
        for p, idx in zip(top_p, top_i, strict=True)
    ]
    return PredictResponse(
        request_id=uuid.uuid4().hex, stream_id=stream_id, adapter=adapter_name, step=step, predictions=predictions
    )
