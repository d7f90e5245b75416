"""``POST /v1/streams/{id}/feedback``: labels for earlier ``/v1/predict`` answers (by their
``request_id``) -> the stream's online error, adapted and source, as counts and rates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field, StrictInt

from tta_server.auth import API
from tta_server.deps import ServicesDep
from tta_server.routes.bodies import RequestBody
from tta_server.routes.docs import ERRORS
from tta_server.routes.streams import ROUTED, StreamId
from tta_server.streams import validate_stream_id

router = APIRouter(prefix="/v1", tags=["streams"], responses=ERRORS, dependencies=API)


class Labels(RequestBody):
    request_id: str = Field(min_length=1, max_length=128, description="the request_id of a /v1/predict answer")
    labels: list[StrictInt] = Field(  # strict: JSON true or "3" is no class index
        min_length=1, description="the true class index of each image, in request order"
    )


class Feedback(RequestBody):
    items: list[Labels] = Field(min_length=1, max_length=1000)


@router.post("/streams/{stream_id}/feedback", dependencies=ROUTED)
async def feedback(
    request: Request, body: Feedback, services: ServicesDep, stream_id: str = StreamId
) -> dict[str, Any]:
    """Score earlier predictions of the stream; returns the stream's totals so far. All items are
    checked first: one unknown, expired or mismatched item refuses the whole request."""
    validate_stream_id(stream_id)
    request.state.stream_id = stream_id
    log = services.feedback
    log.check(stream_id, [(item.request_id, item.labels) for item in body.items])
    stream = await services.streams.get(stream_id)  # woken if spilled: its totals are in its state
    for item in body.items:
        stream.feedback = log.resolve(stream_id, item.request_id, item.labels, stream.feedback)
    stream.version += 1  # the totals are part of the snapshot
    return {"stream_id": stream_id, **stream.feedback.report()}
