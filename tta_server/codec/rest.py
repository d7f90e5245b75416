"""``POST /v1/predict`` bodies: multipart files, base64 JSON or a raw tensor -> one float batch."""

from __future__ import annotations

import asyncio
import base64
import binascii

import torch
from starlette.datastructures import UploadFile
from starlette.requests import Request

from adapters import Preprocessing
from tta_server.codec import tensors
from tta_server.codec.errors import ApiError
from tta_server.codec.images import PixelBudget, decode_image
from tta_server.codec.jsonbody import parse_json


async def decode_predict(
    request: Request, preprocessing: Preprocessing, max_images: int, max_pixels: int, max_request_pixels: int
) -> torch.Tensor:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/octet-stream"):
        dtype = tensors.parse_dtype(request.headers.get("x-tensor-dtype"))
        shape = tensors.check_shape(
            tensors.parse_shape_header(request.headers.get("x-tensor-shape")),
            dtype,
            preprocessing.input_size,
            max_images,
        )
        return tensors.from_bytes(await request.body(), dtype, shape)
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=max_images + 1, max_fields=max_images + 1)
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        payloads = [(f"image {i} ({str(f.filename)[:60]})", await f.read()) for i, f in enumerate(files)]
    elif content_type.startswith("application/json"):
        body = await request.body()
        payloads = _base64_images(await asyncio.to_thread(parse_json, body))  # megabytes of JSON: off the loop
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content-type {content_type[:80] or 'missing'}; send multipart/form-data files, JSON "
            '{"images": [base64]} or application/octet-stream with X-Tensor-Shape and X-Tensor-Dtype',
        )
    if not payloads:
        raise ApiError(422, "no_images", "the request holds no images")
    if len(payloads) > max_images:
        raise ApiError(413, "too_many_images", f"{len(payloads)} images; max_images_per_request={max_images}")
    # decoding is CPU work: keep it off the event loop
    budget = PixelBudget(max_request_pixels)
    images = await asyncio.to_thread(
        lambda: [decode_image(d, label, preprocessing, max_pixels, budget) for label, d in payloads]
    )
    return torch.stack(images)


def _base64_images(parsed: object) -> list[tuple[str, bytes]]:
    if not isinstance(parsed, dict) or set(parsed) != {"images"}:
        raise ApiError(422, "invalid_request", 'expected {"images": ["<base64>", ...]}')
    images = parsed["images"]
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise ApiError(422, "invalid_request", 'expected {"images": ["<base64>", ...]}')
    payloads = []
    for i, text in enumerate(images):
        try:
            payloads.append((f"image {i}", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError) as exc:
            raise ApiError(422, "invalid_image", f"image {i}: not valid base64 ({exc})") from None
    return payloads
