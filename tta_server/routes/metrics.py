"""``GET /metrics``: Prometheus exposition; bearer-token protected like every other non-health
route unless ``metrics_open`` is set."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tta_server.auth import role_of
from tta_server.deps import ServicesDep, SettingsDep
from tta_server.metrics import ServerMetrics

router = APIRouter(tags=["metrics"])


async def metrics_access(request: Request, settings: SettingsDep) -> None:
    if not settings.metrics_open:
        role_of(request, settings)


@router.get(
    "/metrics",
    dependencies=[Depends(metrics_access)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request, _: ServicesDep) -> Response:
    registry: ServerMetrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
