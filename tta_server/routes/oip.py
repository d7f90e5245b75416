"""Open Inference Protocol v2 (KServe / Triton HTTP): inference on streams.

``POST /v2/models/{name}/infer`` takes one input tensor, ``INPUT``: FP32 (N, 3, H, W) in [0, 1]
or UINT8 (N, H, W, 3), as JSON ``data`` or with the binary-data extension
(``Inference-Header-Content-Length``). It returns ``PROBABILITIES`` FP32 (N, C) and ``CLASS``
INT64 (N,), as JSON or binary when asked. The sequence parameters map onto streams, as Triton's
sequence batcher does with correlation ids: ``sequence_id`` names the stream (``seq-<id>``),
``sequence_start`` starts it afresh and ``sequence_end`` releases it (deleting its state) after
the request (a stream whose snapshot cannot be deleted is kept, and the response's parameters say
``sequence_released: false``); both need an admin token when admin tokens are set. Without a
``sequence_id`` the request runs on the shared default stream. Errors are ``{"error": "<message>"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import APIRouter, Request, Response

from tta_server.auth import API, ApiRole, require_admin_role
from tta_server.codec.oip import decode_infer, encode_infer
from tta_server.deps import ServicesDep
from tta_server.routes.docs import OIP_ERRORS
from tta_server.routes.oip_models import check_model
from tta_server.streams import SnapshotDeleteError, UnknownStreamError, stream_id_for_sequence
from tta_server.streams.claims import routed_by_stream_header

router = APIRouter(prefix="/v2", tags=["open inference protocol"], responses=OIP_ERRORS, dependencies=API)
HEADER_LENGTH = "inference-header-content-length"


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(
    request: Request, name: str, services: ServicesDep, role: ApiRole, version: str | None = None
) -> Response:
    check_model(services, name, version)
    started = time.perf_counter_ns()
    try:
        response = await _infer(request, name, services, role)
    except Exception:
        services.statistics.record(0, started, ok=False)
        raise
    return response


async def _release(services: ServicesDep, stream_id: str) -> dict[str, object] | None:
    """End a sequence. The inference has run: a stream that cannot be deleted (its snapshot is on a
    read-only disk) is kept, and the response's parameters say so instead of losing the outputs."""
    try:
        await services.streams.delete(stream_id)
    except UnknownStreamError:
        pass
    except SnapshotDeleteError as exc:
        return {"sequence_released": False, "sequence_release_error": str(exc)}
    return None


async def _infer(request: Request, name: str, services: ServicesDep, role: ApiRole) -> Response:
    settings, source, streams = services.settings, services.source, services.streams
    body = await request.body()
    decoded = await asyncio.to_thread(  # JSON tensor data: ~170 ms for 256 CIFAR images, off the event loop
        decode_infer,
        body,
        request.headers.get(HEADER_LENGTH),
        source.preprocessing.input_size,
        settings.max_images_per_request,
    )
    parameters = decoded.parameters
    sequence_stream = stream_id_for_sequence(parameters.get("sequence_id"))
    stream_id = sequence_stream or settings.default_stream
    request.state.stream_id = stream_id
    # with replicas: the balancer routed it by this sequence only if the header names its stream
    routed_by_stream_header.set(request.headers.get("x-stream-id") == sequence_stream)
    start, end = bool(parameters.get("sequence_start")), bool(parameters.get("sequence_end"))
    if sequence_stream is not None and (start or end):
        require_admin_role(role, "sequence_start / sequence_end")
    if sequence_stream is not None and start:
        with contextlib.suppress(UnknownStreamError):
            await streams.delete(stream_id)  # a new sequence starts from the source
    started = time.perf_counter_ns()
    result = await streams.step(stream_id, decoded.batch)
    request.state.adapter = result.adapter
    services.statistics.record(decoded.batch.shape[0], started, ok=True)
    released: dict[str, object] | None = None
    if sequence_stream is not None and end:
        released = await _release(services, stream_id)
    probabilities = result.logits.float().softmax(1).numpy()
    content, header_length = encode_infer(decoded, probabilities, name, source.model_id, released)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={"Inference-Header-Content-Length": str(header_length)}
    )
