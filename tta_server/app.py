"""The application factory: ``create_app(settings)`` loads the model in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI

from adapters import create_adapter, create_source_model
from tta_server.auth import install_auth
from tta_server.errors import install_error_handlers
from tta_server.routes import health, oip, predict
from tta_server.routes import streams as streams_routes
from tta_server.settings import Settings
from tta_server.streams import StreamManager

logger = logging.getLogger("tta_server")


async def _snapshot_every(streams: StreamManager, directory: Path, interval_s: float) -> None:
    """Bound what a crash (even SIGKILL) loses to ``interval_s`` of adaptation."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await streams.snapshot_changed(directory)
        except (OSError, RuntimeError) as exc:  # a full disk must not stop serving
            logger.error("periodic snapshot failed: %s", exc)


async def _expire_every(streams: StreamManager, idle_s: float) -> None:
    while True:
        await asyncio.sleep(min(idle_s / 4, 10.0))
        try:
            streams.expire_idle(idle_s)
        except (OSError, RuntimeError) as exc:
            logger.error("idle-stream expiry failed: %s", exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        source = create_source_model(settings.model, **settings.model_kwargs)
        streams = StreamManager(
            source,
            settings.default_adapter,
            settings.default_adapter_config,
            settings.workers,
            min_adapt_batch=settings.min_adapt_batch,
            max_streams=settings.max_streams,
            max_batch_size=settings.max_batch_size,
            max_delay_ms=settings.max_delay_ms,
            memory_budget_bytes=settings.memory_budget_bytes,
            spill_dir=settings.snapshot_dir,
            memory_wait_s=settings.memory_wait_s,
            # the most images one step can hold: a request, a batching group, or buffered small requests
            largest_step=max(settings.max_images_per_request, settings.max_batch_size, 2 * settings.min_adapt_batch),
        )
        if settings.memory_budget_bytes is not None:  # measured before serving, not on the first request
            streams.measure_working(create_adapter(settings.default_adapter, source, settings.default_adapter_config))
        app.state.source = source
        app.state.streams = streams
        periodic = None
        if settings.snapshot_dir is not None:
            app.state.restore_failures = streams.restore_all(settings.snapshot_dir)
            if settings.snapshot_interval_s > 0:
                periodic = asyncio.create_task(
                    _snapshot_every(streams, settings.snapshot_dir, settings.snapshot_interval_s)
                )
        expiry = None
        if settings.idle_timeout_s is not None:
            expiry = asyncio.create_task(_expire_every(streams, settings.idle_timeout_s))
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            for task in (periodic, expiry):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            streams.close()
            if settings.snapshot_dir is not None:
                streams.snapshot_all(settings.snapshot_dir)

    app = FastAPI(title="tta-server", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.ready = False
    install_error_handlers(app)
    install_auth(app, settings)
    app.include_router(health.router)
    app.include_router(predict.router)
    app.include_router(streams_routes.router)
    app.include_router(oip.router)
    return app
