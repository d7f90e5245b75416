"""The application factory: ``create_app(settings)`` loads the model in its lifespan, or serves
services built beforehand (``tta-server serve`` builds them first, so that a model that cannot
load ends in one line rather than in a lifespan traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from adapters import SourceModel, create_adapter, create_source_model
from tta_server import __version__
from tta_server.codec.limits import BodyLimitMiddleware, InFlightBodies
from tta_server.deps import Services, one_stream_header
from tta_server.errors import error_body, install_error_handlers
from tta_server.logs import AccessLogMiddleware, ReplicaHeaderMiddleware
from tta_server.metrics import ServerMetrics
from tta_server.routes import feedback as feedback_routes
from tta_server.routes import health, oip, oip_models, predict
from tta_server.routes import metrics as metrics_routes
from tta_server.routes import streams as streams_routes
from tta_server.settings import Settings
from tta_server.streams import Persistence, SnapshotStore, StreamManager, StreamOptions
from tta_server.streams.feedback import FeedbackLog
from tta_server.streams.native_memory import FreedMemory
from tta_server.streams.ownership import Ownership
from tta_server.streams.persistence import expire_unpersisted, run_forever

logger = logging.getLogger("tta_server")


def build_services(settings: Settings) -> Services:
    """Load the model and build the stream manager (and its store) from the settings."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    source = create_source_model(settings.model, **settings.model_kwargs)
    source.module.to(settings.device)  # before any adapter: per-stream views share the source tensors
    store = SnapshotStore(settings.snapshot_dir) if settings.snapshot_dir is not None else None
    ownership = None
    if settings.replica_id is not None:
        if settings.snapshot_dir is None:
            raise ValueError("replica_id needs snapshot_dir: replicas hand streams over through the shared store")
        ownership = Ownership(settings.snapshot_dir, settings.replica_id, settings.lease_ttl_s)
    options = StreamOptions(
        default_adapter=settings.default_adapter,
        default_config=settings.default_adapter_config,
        workers=settings.workers,
        min_adapt_batch=settings.min_adapt_batch,
        max_streams=settings.max_streams,
        max_streams_total=settings.max_streams_total,
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        memory_budget_bytes=settings.memory_budget_bytes,
        memory_wait_s=settings.memory_wait_s,
        max_adapter_configs=settings.max_adapter_configs,
        # the most images one step can hold: a request, a batching group, or buffered small requests
        largest_step=max(settings.max_images_per_request, settings.max_batch_size, 2 * settings.min_adapt_batch),
        auto_create=settings.auto_create_streams,
        source_signals=settings.source_signals,
        signal_window_steps=settings.signal_window_steps,
        dropout_estimate=settings.dropout_estimate,
        signal_precision=settings.signal_precision,
        guard=settings.guard,
        handover_wait_s=settings.handover_wait_s,
    )
    streams = StreamManager(source, options, store, ownership)
    if settings.memory_budget_bytes is not None:  # measured before serving, not on the first request
        _check_budget_fits_a_step(settings, streams, source)
    persistence = Persistence(streams, store, settings.persistence_failure_grace_s) if store else None
    feedback = FeedbackLog(settings.feedback_max_requests, len(source.class_names))
    streams.end_observers.append(feedback.forget)  # a stream's pending predictions end with it
    return Services(settings=settings, source=source, streams=streams, persistence=persistence, feedback=feedback)


def _check_budget_fits_a_step(settings: Settings, streams: StreamManager, source: SourceModel) -> None:
    """Measure the default adapter's working memory; refuse a budget that no request could fit in."""
    adapter = create_adapter(settings.default_adapter, source, settings.default_adapter_config)
    estimate = streams.budget.measure(adapter, source)
    # a one-image request runs with the buffered images of a stream (OnlineStream.step_images)
    images = 1 if settings.min_adapt_batch <= 1 else settings.min_adapt_batch + 1
    smallest = estimate.bytes_for(images) + adapter.state_bytes() + streams.budget.objects_of(adapter)
    if smallest > (budget := settings.memory_budget_bytes or 0):
        raise ValueError(
            f"memory_budget_bytes={budget} cannot hold a single step: the default adapter "
            f"{settings.default_adapter!r} needs {smallest} B ({smallest / 2**20:.1f} MiB) for one image with "
            f"min_adapt_batch={settings.min_adapt_batch} (working memory and one stream's state and objects); "
            "raise the budget, or lower min_adapt_batch"
        )


def _summary(services: Services, restored: int) -> str:
    s, source = services.settings, services.source
    frozen = type(services.streams.frozen).__name__
    budget = f"{s.memory_budget_bytes} B" if s.memory_budget_bytes else "none"
    quarantined = services.persistence.store.report()["quarantined"] if services.persistence else 0
    return (
        f"tta-server {__version__} ready on http://{s.host}:{s.port}: model {source.model_id} on {s.device} "
        f"(frozen forward: {frozen}), "
        f"default adapter {s.default_adapter}, min_adapt_batch {s.min_adapt_batch}, memory budget {budget}, "
        f"snapshots {s.snapshot_dir or 'off'} ({restored} streams restored, {quarantined} quarantined), "
        f"auth {'on' if s.api_tokens or s.admin_tokens else 'off'}, default stream {s.default_stream!r}"
    )


def takes_large_bodies(path: str) -> bool:
    """The routes whose bodies are images or tensors (``max_request_bytes``); the others take small
    JSON bodies (``max_json_request_bytes``)."""
    return path == "/v1/predict" or (path.startswith("/v2/models/") and path.endswith("/infer"))


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """The app; ``services`` from ``build_services(settings)`` serve its first lifespan."""
    settings = settings or Settings()
    prebuilt = [services] if services is not None else []

    in_flight = InFlightBodies(settings.max_inflight_request_bytes)
    metrics = ServerMetrics(__version__, in_flight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = prebuilt.pop() if prebuilt else build_services(settings)  # closed at shutdown: used once
        metrics.services = services
        services.streams.step_observers.append(metrics.observe_step)
        services.streams.guard_observers.append(metrics.observe_guard)
        services.streams.transfer_observers.append(metrics.observe_transfer)
        freed = FreedMemory()  # pages of spilled and deleted streams go back to the system
        services.streams.transfer_observers.append(lambda kind, _: freed.freed() if kind == "spill" else None)
        services.streams.end_observers.append(freed.freed)
        metrics.start_guard_series(settings.default_adapter, settings.guard.get("policy", "reset"))
        tasks: list[asyncio.Task[None]] = []
        restored = 0
        persistence = services.persistence
        if persistence is not None:
            found = persistence.restore_all()
            restored = len(found)
            if settings.verify_restored_snapshots and found:
                tasks.append(asyncio.create_task(persistence.verify_restored(found)))
            else:  # nothing to check, or checking is off: say so rather than "not finished" forever
                persistence.verification.enabled = settings.verify_restored_snapshots
                persistence.verification.finished = True
            if settings.verify_snapshots_interval_s > 0:
                scrub = run_forever("snapshot check", settings.verify_snapshots_interval_s, persistence.verify_spilled)
                tasks.append(asyncio.create_task(scrub))
            if settings.snapshot_interval_s > 0:
                tasks.append(
                    asyncio.create_task(
                        run_forever("snapshots", settings.snapshot_interval_s, persistence.snapshot_changed)
                    )
                )
        if persistence is not None and services.streams.ownership is not None:
            tasks.append(asyncio.create_task(run_forever("leases", settings.lease_ttl_s / 3, persistence.renew_leases)))
            await persistence.count_stored()
            tasks.append(
                asyncio.create_task(run_forever("store count", settings.lease_ttl_s, persistence.count_stored))
            )
        if freed.available:
            tasks.append(asyncio.create_task(run_forever("memory trim", 5.0, lambda: asyncio.to_thread(freed.trim))))
        if settings.idle_timeout_s is not None:
            idle = settings.idle_timeout_s
            expire = (
                (lambda: persistence.expire_idle(idle))
                if persistence
                else (lambda: expire_unpersisted(services.streams, idle))
            )
            tasks.append(asyncio.create_task(run_forever("idle expiry", min(idle / 4, 10.0), expire)))
        app.state.services = services
        services.ready = True
        logger.info(_summary(services, restored))
        try:
            yield
        finally:
            services.ready = False
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if persistence is not None:
                failures = await persistence.snapshot_all(settings.shutdown_snapshot_timeout_s)
                released = persistence.release_all(failures)
                if released:
                    logger.info("shutdown: %d stream(s) released to the other replicas", released)
            services.streams.close()

    app = FastAPIOffline(
        title="tta-server",
        version=__version__,
        lifespan=lifespan,
        dependencies=[Depends(one_stream_header)],
        description="Continual test-time adaptation: per-stream online adapters over a frozen classifier.",
    )
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(predict.router)
    app.include_router(streams_routes.router)
    app.include_router(feedback_routes.router)
    app.include_router(oip_models.router)
    app.include_router(oip.router)
    app.include_router(metrics_routes.router)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        max_json_bytes=settings.max_json_request_bytes,
        large_body=takes_large_bodies,
        read_timeout_s=settings.request_read_timeout_s,
        body_timeout_s=settings.request_body_timeout_s,
        error_body=error_body,
        in_flight=in_flight,
    )
    if settings.replica_id is not None:
        app.add_middleware(ReplicaHeaderMiddleware, replica_id=settings.replica_id)
    app.add_middleware(AccessLogMiddleware, observe=metrics.observe_request)  # outermost: sees every status
    return app
