"""Streams as resources (``/v1/streams``) and the adapter catalogue (``/v1/adapters``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from adapters import ArtefactStore, get_adapter_class, list_adapters
from tta_server.errors import ApiError
from tta_server.snapshots import SnapshotError
from tta_server.streams import Stream, StreamExistsError, StreamLimitError, StreamManager, UnknownStreamError

router = APIRouter(prefix="/v1", tags=["streams"])


class StreamCreate(BaseModel):
    stream_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    adapter: str | None = Field(None, description="registered adapter name (default: the server's default)")
    config: dict[str, Any] = Field(default_factory=dict, description="the adapter's config (see /v1/adapters)")


class StreamInfo(BaseModel):
    stream_id: str
    adapter: str
    config: dict[str, Any]
    steps: int
    state_bytes: int
    signals: dict[str, float] = Field(description="the adapter's last diagnostics (entropy, confidence, ...)")
    created_at: float
    last_used_at: float
    buffered_images: int = Field(description="small-request images waiting for min_adapt_batch")


def _info(stream: Stream) -> StreamInfo:
    adapter = stream.adapter
    return StreamInfo(
        stream_id=stream.stream_id,
        adapter=adapter.name,
        config=adapter.config.model_dump(mode="json"),
        steps=adapter.steps,
        state_bytes=adapter.state_bytes(),
        signals=adapter.diagnostics(),
        created_at=stream.created_at,
        last_used_at=stream.last_used_at,
        buffered_images=sum(p.shape[0] for p in stream.pending),
    )


def _streams(request: Request) -> StreamManager:
    manager: StreamManager = request.app.state.streams
    return manager


def _known(request: Request, stream_id: str) -> Stream:
    try:
        return _streams(request).get(stream_id)
    except UnknownStreamError:
        raise ApiError(404, "unknown_stream", f"no stream {stream_id!r}; create it with POST /v1/streams") from None


@router.get("/adapters")
async def adapters(request: Request) -> list[dict[str, Any]]:
    """Every registered adapter: its paper, config JSON schema and the source artefacts its
    default config needs (and whether this model has them)."""
    store = ArtefactStore(request.app.state.source)
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


@router.post("/streams", status_code=201)
async def create_stream(request: Request, body: StreamCreate) -> StreamInfo:
    manager = _streams(request)
    adapter = body.adapter or manager.default_adapter
    if adapter not in list_adapters():
        raise ApiError(422, "unknown_adapter", f"unknown adapter {adapter!r}; registered: {', '.join(list_adapters())}")
    try:
        stream = manager.create(body.stream_id, adapter, body.config)
    except StreamExistsError as exc:
        raise ApiError(409, "stream_exists", str(exc)) from exc
    except StreamLimitError as exc:
        raise ApiError(503, "stream_limit", str(exc), headers={"Retry-After": "30"}) from exc
    return _info(stream)


@router.get("/memory")
async def memory(request: Request) -> dict[str, Any]:
    """Memory budget use: stream states, working memory of running steps, per-adapter estimates."""
    return _streams(request).memory_report()


@router.get("/streams")
async def list_streams(request: Request) -> list[StreamInfo]:
    return [_info(stream) for stream in list(_streams(request).streams.values())]


@router.get("/streams/{stream_id}")
async def get_stream(request: Request, stream_id: str) -> StreamInfo:
    return _info(_known(request, stream_id))


@router.post("/streams/{stream_id}/reset")
async def reset_stream(request: Request, stream_id: str) -> StreamInfo:
    _known(request, stream_id)
    return _info(await _streams(request).reset(stream_id))


@router.delete("/streams/{stream_id}", status_code=204)
async def delete_stream(request: Request, stream_id: str) -> None:
    _known(request, stream_id)
    await _streams(request).delete(stream_id)


def _snapshot_dir(request: Request) -> Path:
    directory: Path | None = request.app.state.settings.snapshot_dir
    if directory is None:
        raise ApiError(409, "snapshots_disabled", "set snapshot_dir (TTA_SNAPSHOT_DIR) to snapshot streams")
    return directory


@router.post("/streams/{stream_id}/snapshot")
async def snapshot_stream(request: Request, stream_id: str) -> dict[str, Any]:
    """Write the stream's state atomically to ``<snapshot_dir>/<stream id>.safetensors``."""
    directory = _snapshot_dir(request)
    stream = _known(request, stream_id)
    path = await _streams(request).snapshot(stream_id, directory)
    return {"stream_id": stream_id, "path": str(path), "steps": stream.adapter.steps}


@router.post("/streams/{stream_id}/restore")
async def restore_stream(request: Request, stream_id: str) -> StreamInfo:
    """Load the stream's last snapshot (creating the stream with the snapshot's adapter if needed)."""
    directory = _snapshot_dir(request)
    try:
        stream = await _streams(request).restore(stream_id, directory)
    except SnapshotError as exc:
        raise ApiError(404 if "no snapshot" in str(exc) else 409, "snapshot_error", str(exc)) from exc
    return _info(stream)
