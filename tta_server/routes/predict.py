"""``POST /v1/predict``: classify images on a stream, then adapt that stream on them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field

from tta_server.auth import API
from tta_server.codec.rest import decode_predict
from tta_server.deps import ServicesDep
from tta_server.routes.docs import ERRORS, PREDICT_BODY
from tta_server.streams import STREAM_ID_PATTERN, validate_stream_id
from tta_server.streams.stream import StepResult

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=API)


class Prediction(BaseModel):
    class_index: int
    label: str
    confidence: float
    top_k: dict[str, float] = Field(description="the top-k labels and their probabilities")


class PredictResponse(BaseModel):
    request_id: str = Field(description="this request's X-Request-Id (echoed, or generated)")
    stream_id: str
    adapter: str
    step: int = Field(description="the stream's adaptation step count after this request")
    predictions: list[Prediction]
    guard: dict[str, Any] | None = Field(
        None, description="what the stream's collapse guard did in this request's step (reason, action), if anything"
    )


@router.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=PREDICT_BODY)
async def predict(
    request: Request,
    services: ServicesDep,
    x_stream_id: Annotated[
        str | None,
        Header(
            description="the stream to predict and adapt on; created with the default adapter on first use "
            "(auto_create_streams). Without it, the request joins the shared default stream.",
            pattern=STREAM_ID_PATTERN,
        ),
    ] = None,
) -> PredictResponse:
    """Predict every image (before the update, as the adapter's paper does), then adapt the stream."""
    settings, source = services.settings, services.source
    stream_id = validate_stream_id(x_stream_id or settings.default_stream)
    request.state.stream_id = stream_id
    batch = await decode_predict(
        request,
        source.preprocessing,
        settings.max_images_per_request,
        settings.max_image_pixels,
        settings.max_request_pixels,
    )
    request_id = str(request.state.request_id)

    def pending(result: StepResult) -> None:  # while the stream is locked: never after a delete of it
        classes = result.logits.float().softmax(1).argmax(1)  # as the answer's class_index
        services.feedback.record(request_id, stream_id, classes, result.source_classes)

    result = await services.streams.step(stream_id, batch, on_result=pending)
    request.state.adapter = adapter_name = result.adapter
    probs = result.logits.float().softmax(1)
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
        request_id=request_id,
        stream_id=stream_id,
        adapter=adapter_name,
        step=result.steps,
        predictions=predictions,
        guard=result.guard,
    )
