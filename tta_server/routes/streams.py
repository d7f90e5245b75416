"""Streams as resources (``/v1/streams``), the adapter catalogue, memory and persistence reports."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field, ValidationError

from adapters import ArtefactStore, get_adapter_class, list_adapters
from adapters.guard_config import GuardConfig
from tta_server.auth import ADMIN, API
from tta_server.codec.errors import ApiError
from tta_server.deps import ManagerDep, PersistenceDep, ServicesDep, SourceDep
from tta_server.routes.bodies import RequestBody
from tta_server.routes.docs import ERRORS
from tta_server.streams import STREAM_ID_PATTERN, Stream
from tta_server.streams.claims import routed_by_stream_header

router = APIRouter(prefix="/v1", tags=["streams"], responses=ERRORS, dependencies=API)
StreamId = Path(min_length=1, max_length=128, pattern=STREAM_ID_PATTERN, description="the stream id")


async def _note_routing(request: Request, stream_id: str = StreamId) -> None:
    """With replicas: a change addressed by path moves the stream here only if the balancer routed
    it by the stream's own header (see ``routed_by_stream_header``)."""
    routed_by_stream_header.set(request.headers.get("x-stream-id") == stream_id)


ROUTED = [Depends(_note_routing)]


class StreamCreate(RequestBody):
    stream_id: str = Field(min_length=1, max_length=128, pattern=STREAM_ID_PATTERN)
    adapter: str | None = Field(None, description="registered adapter name (default: the server's default)")
    config: dict[str, Any] = Field(default_factory=dict, description="the adapter's config (see /v1/adapters)")
    guard: dict[str, Any] | None = Field(
        None,
        description='the stream\'s collapse guard (default: the server\'s guard setting), e.g. {"policy": "rollback", '
        '"thresholds": [{"signal": "source_agreement", "below": 0.5}], "max_drop": {"atc_accuracy": 0.1}}',
    )


class StreamInfo(BaseModel):
    stream_id: str
    adapter: str
    config: dict[str, Any]
    steps: int
    state_bytes: int = Field(description="per-stream tensors plus buffered images")
    signals: dict[str, float] = Field(description="the adapter's last diagnostics (entropy, confidence, ...)")
    created_at: float | None = Field(description="None for a spilled stream")
    last_used_at: float | None = Field(description="None for a spilled stream (see snapshot_written_at)")
    resident: bool = Field(True, description="in memory; false for a spilled stream (listed with ?include_spilled)")
    snapshot_written_at: float | None = Field(None, description="for a spilled stream: when its snapshot was written")
    buffered_images: int = Field(description="small-request images waiting for min_adapt_batch")
    feedback: dict[str, float | int] = Field(
        default_factory=dict, description="online error from POST /v1/streams/{id}/feedback (adapted and source)"
    )
    windows: dict[str, Any] = Field(
        description="label-free signals: the last step, the current window, the last closed windows and each "
        "signal's slope per window (source_agreement, atc_accuracy, atc_accuracy_source, mean_entropy, "
        "mean_confidence, marginal_entropy, majority_share, bn_shift, atc_gap)"
    )
    bn_shift_layers: list[float] = Field(
        description="the last step's BatchNorm-statistics shift per source BatchNorm layer (Gaussian KL)"
    )
    guard: dict[str, Any] = Field(
        description="the collapse guard: its config, actions by reason, pause, and the latest decision records"
    )


class SnapshotInfo(BaseModel):
    stream_id: str
    path: str
    steps: int


def _info(stream: Stream) -> StreamInfo:
    adapter = stream.online.adapter
    return StreamInfo(
        stream_id=stream.stream_id,
        adapter=adapter.name,
        config=adapter.config.model_dump(mode="json"),
        steps=adapter.steps,
        state_bytes=stream.online.state_bytes(),
        signals=adapter.diagnostics(),
        created_at=stream.created_at,
        last_used_at=stream.last_used_at,
        buffered_images=stream.online.buffered_images,
        windows=stream.online.signals.report(),
        bn_shift_layers=stream.online.last_bn_shift,
        guard=stream.online.guard.report(),
    )


@router.get("/adapters")
async def adapters(source: SourceDep) -> list[dict[str, Any]]:
    """Every registered adapter: its paper, config JSON schema and the source artefacts its
    default config needs (and whether this model has them)."""
    store = ArtefactStore(source)
    out = []
    for name in list_adapters():
        cls = get_adapter_class(name)
        needed = cls.artefacts_for(cls.Config())
        out.append(
            {
                "name": name,
                "paper": cls.paper,
                "config_schema": cls.Config.model_json_schema(),
                "artefacts": {artefact: store.has(artefact) for artefact in needed},
            }
        )
    return out


@router.post("/streams", status_code=201, dependencies=ADMIN)
async def create_stream(body: StreamCreate, manager: ManagerDep) -> StreamInfo:
    adapter = body.adapter or manager.options.default_adapter
    if adapter not in list_adapters():
        raise ApiError(422, "unknown_adapter", f"unknown adapter {adapter!r}; registered: {', '.join(list_adapters())}")
    if body.guard is not None:
        try:
            GuardConfig.model_validate(body.guard)
        except ValidationError as exc:
            raise ApiError(422, "invalid_guard", f"invalid guard config: {exc}") from exc
    return _info(await manager.create(body.stream_id, adapter, body.config, body.guard))


@router.get("/memory")
async def memory(manager: ManagerDep) -> dict[str, Any]:
    """Memory budget use: stream states, working memory of running steps, per-adapter estimates."""
    return manager.memory_report()


@router.get("/persistence")
async def persistence(services: ServicesDep) -> dict[str, Any]:
    """Snapshot store health: quarantined files with their reasons, failures by kind, diverged steps."""
    report: dict[str, Any] = services.persistence.report() if services.persistence else {"directory": None}
    report["diverged_steps"] = services.streams.counters["diverged_steps"]
    return report


def _spilled_info(stream_id: str, described: dict[str, Any]) -> StreamInfo:
    return StreamInfo(
        stream_id=stream_id,
        adapter=described["adapter"],
        config=described["config"],
        steps=described["steps"],
        state_bytes=described["file_bytes"],
        signals={},
        created_at=None,
        last_used_at=None,
        resident=False,
        snapshot_written_at=described["written_at"],
        buffered_images=described["buffered_images"],
        windows={},
        bn_shift_layers=[],
        guard={},
    )


@router.get("/streams")
async def list_streams(
    manager: ManagerDep,
    include_spilled: bool = Query(
        False,
        description="also list spilled streams (and those restored at start-up, which start spilled) from their "
        "snapshot headers, without waking them: adapter, config, steps, snapshot size and time",
    ),
    after: str | None = Query(
        None, min_length=1, max_length=128, pattern=STREAM_ID_PATTERN, description="the previous page's last stream_id"
    ),
    limit: int = Query(1000, ge=1, le=10_000, description="at most this many streams per page"),
) -> list[StreamInfo]:
    """Streams held in memory, in stream_id order, a page at a time (``after`` the last one listed;
    a page shorter than ``limit`` is the last); with ``include_spilled``, spilled streams too
    (``resident: false``)."""
    if include_spilled and manager.store is not None:
        async with manager.transfers:  # a stream being spilled or woken is in neither set until it lands
            held, spilled = dict(manager.streams), set(manager.spilled)
    else:
        held, spilled = dict(manager.streams), set()
    candidates = sorted(sid for sid in held.keys() | spilled if after is None or sid > after)
    listed: list[StreamInfo] = []
    position = 0
    while len(listed) < limit and position < len(candidates):  # more than one round only past unreadable headers
        chunk = candidates[position : position + limit - len(listed)]
        position += len(chunk)
        infos = {sid: _info(held[sid]) for sid in chunk if sid in held}
        asleep = [sid for sid in chunk if sid not in infos]
        if asleep and manager.store is not None:
            store = manager.store
            headers = await asyncio.to_thread(lambda: [store.describe(sid) for sid in asleep])  # noqa: B023
            infos.update(
                {sid: _spilled_info(sid, header) for sid, header in zip(asleep, headers, strict=True) if header}
            )
        listed += [infos[sid] for sid in chunk if sid in infos]
    return listed


@router.get("/streams/{stream_id}")
async def get_stream(request: Request, services: ServicesDep, stream_id: str = StreamId) -> StreamInfo:
    request.state.stream_id = stream_id  # the access log names it
    stream = await services.streams.get(stream_id, reading=True)
    info = _info(stream)
    info.feedback = stream.feedback.report() if stream.feedback.images else {}
    return info


@router.post("/streams/{stream_id}/reset", dependencies=ADMIN + ROUTED)
async def reset_stream(request: Request, manager: ManagerDep, stream_id: str = StreamId) -> StreamInfo:
    request.state.stream_id = stream_id
    return _info(await manager.reset(stream_id))


@router.delete("/streams/{stream_id}", status_code=204, dependencies=ADMIN + ROUTED)
async def delete_stream(request: Request, services: ServicesDep, stream_id: str = StreamId) -> None:
    """Forget the stream and delete its snapshot (it does not come back after a restart). When the
    snapshot cannot be deleted (a read-only disk) the answer is 503 ``snapshot_delete_failed`` and
    the stream is kept as it was."""
    request.state.stream_id = stream_id
    await services.streams.delete(stream_id)


@router.post("/streams/{stream_id}/snapshot", dependencies=ADMIN + ROUTED)
async def snapshot_stream(
    request: Request, manager: ManagerDep, persistence: PersistenceDep, stream_id: str = StreamId
) -> SnapshotInfo:
    """Write the stream's state atomically to the snapshot store."""
    request.state.stream_id = stream_id
    path = await persistence.snapshot(stream_id)
    return SnapshotInfo(stream_id=stream_id, path=str(path), steps=(await manager.get(stream_id)).online.steps)


@router.post("/streams/{stream_id}/restore", dependencies=ADMIN + ROUTED)
async def restore_stream(request: Request, persistence: PersistenceDep, stream_id: str = StreamId) -> StreamInfo:
    """Load the stream's last snapshot (creating the stream with the snapshot's adapter if needed)."""
    request.state.stream_id = stream_id
    return _info(await persistence.restore(stream_id))
