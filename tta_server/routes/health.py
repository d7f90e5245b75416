"""Liveness and readiness (open routes; also at the Open Inference Protocol paths)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

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
    if not request.app.state.ready:
        return JSONResponse(Health(status="loading").model_dump(), status_code=503)
    return Health(status="ready", model=request.app.state.source.model_id)
