"""Typed FastAPI dependencies: what a route needs, fetched in one place.

The lifespan stores one :class:`Services` on ``app.state``; routes declare ``SettingsDep``,
``ManagerDep``, ``SourceDep`` or ``ServicesDep`` and never read ``app.state`` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from adapters import SourceModel
from tta_server.codec.errors import ApiError
from tta_server.settings import Settings
from tta_server.statistics import InferenceStatistics
from tta_server.streams import Persistence, SnapshotsDisabledError, StreamManager
from tta_server.streams.feedback import FeedbackLog


@dataclass
class Services:
    settings: Settings
    source: SourceModel
    streams: StreamManager
    feedback: FeedbackLog
    persistence: Persistence | None = None
    statistics: InferenceStatistics = field(default_factory=InferenceStatistics)
    ready: bool = False

    def is_ready(self) -> bool:
        return self.ready and (self.persistence is None or self.persistence.healthy())


def one_stream_header(request: Request) -> None:
    """Several X-Stream-Id headers are ambiguous: a balancer may hash the first, the last or all of
    them joined, and so route the request by another stream than the one it adapts."""
    if len(request.headers.getlist("x-stream-id")) > 1:
        raise ApiError(400, "invalid_stream_id", "send one X-Stream-Id header, not several")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise ApiError(503, "not_ready", "the server is starting", headers={"Retry-After": "5"})
    return services


def get_manager(services: Annotated[Services, Depends(get_services)]) -> StreamManager:
    return services.streams


def get_persistence(services: Annotated[Services, Depends(get_services)]) -> Persistence:
    if services.persistence is None:
        raise SnapshotsDisabledError("snapshots are off: set snapshot_dir (TTA_SNAPSHOT_DIR)")
    return services.persistence


def get_source(services: Annotated[Services, Depends(get_services)]) -> SourceModel:
    return services.source


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServicesDep = Annotated[Services, Depends(get_services)]
ManagerDep = Annotated[StreamManager, Depends(get_manager)]
SourceDep = Annotated[SourceModel, Depends(get_source)]
PersistenceDep = Annotated[Persistence, Depends(get_persistence)]
