"""Liveness and readiness (open routes; also at the Open Inference Protocol paths).

Readiness is false while the model loads and while snapshots keep failing beyond
``persistence_failure_grace_s``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from tta_server.deps import Services

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    model: str | None = None


@router.get("/health/live", response_model=Health)
@router.get("/v2/health/live", response_model=Health)
async def live() -> Health:
    return Health(status="live")


@router.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
@router.get("/v2/health/ready", response_model=Health, responses={503: {"model": Health}})
async def ready(request: Request) -> Health | JSONResponse:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None or not services.ready:
        return JSONResponse(Health(status="loading").model_dump(), status_code=503)
    if not services.is_ready():
        return JSONResponse(
            Health(status="persistence_failing", model=services.source.model_id).model_dump(), status_code=503
        )
    return Health(status="ready", model=services.source.model_id)
