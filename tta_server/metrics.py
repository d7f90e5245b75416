"""Prometheus metrics (prometheus-client), one registry per app, served at ``GET /metrics``.

Names are prefixed ``tta_``, in base units (seconds, bytes), counters end in ``_total``. Labels are
bounded: route templates, methods, status codes, adapter names, reasons; never stream ids.
Request and step metrics are observed as they happen; the state of the streams, the budget and
persistence is read from the services at scrape time, so there is one source of truth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from adapters.blocks.signals import ratios
from adapters.guard_config import REASONS
from tta_server.codec.limits import InFlightBodies
from tta_server.metric_catalogue import (
    BN_SHIFT_BUCKETS,
    DEPENDENCE_BUCKETS,
    DISTANCE_BUCKETS,
    DISTANCE_SIGNALS,
    HTTP_METHODS,
    IMAGE_BUCKETS,
    LATENCY_BUCKETS,
    MANAGER_COUNTERS,
    RATIO_BUCKETS,
    RATIO_SIGNALS,
)
from tta_server.streams.failure_log import WRITE_OPERATIONS

if TYPE_CHECKING:
    from tta_server.deps import Services

disable_created_metrics()  # the *_created series double every counter and histogram for no use here


class ServerMetrics:
    def __init__(self, version: str, in_flight: InFlightBodies | None = None) -> None:
        self.registry = CollectorRegistry()
        self.version = version
        self.in_flight = in_flight or InFlightBodies(None)
        self.services: Services | None = None
        self.http_requests = Counter(
            "tta_http_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "tta_http_request_duration_seconds",
            "HTTP request latency, first byte in to last byte out",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "tta_step_duration_seconds",
            "one stream step (predict, and adapt when enough images) on the pool",
            ["adapter"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.step_phase_duration = Histogram(
            "tta_step_phase_duration_seconds",
            "each phase of a step: queue (behind the stream's earlier work, the memory budget and the pool), "
            "adapt (the adapter's forward and update), source_forward (behind the signals), signals (and guard)",
            ["adapter", "phase"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.transfer_duration = Histogram(
            "tta_stream_transfer_duration_seconds",
            "moving one stream between memory and the snapshot store: spill (write if changed) or wake (read)",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.step_images = Histogram(
            "tta_step_images", "images per stream step", ["adapter"], buckets=IMAGE_BUCKETS, registry=self.registry
        )
        self.batch_entropy = Histogram(
            "tta_batch_mean_entropy_nats",
            "mean prediction entropy of each step's batch, across streams",
            ["adapter"],
            buckets=(0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.4, 1.8, 2.3),
            registry=self.registry,
        )
        self.batch_confidence = Histogram(
            "tta_batch_mean_confidence_ratio",
            "mean top-1 probability of each step's batch, across streams",
            ["adapter"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
            registry=self.registry,
        )
        self.batch_ratios = {
            name: Histogram(f"tta_batch_{name}_ratio", text, ["adapter"], buckets=RATIO_BUCKETS, registry=self.registry)
            for name, text in RATIO_SIGNALS.items()
        }
        self.batch_distances = {
            name: Histogram(
                f"tta_batch_{name}_ratio", text, ["adapter"], buckets=DISTANCE_BUCKETS, registry=self.registry
            )
            for name, text in DISTANCE_SIGNALS.items()
        }
        self.batch_bn_shift = Histogram(
            "tta_batch_bn_shift_nats",
            "each step's batch statistics against the source BatchNorm statistics (Gaussian KL, mean over "
            "channels and layers), across streams",
            ["adapter"],
            buckets=BN_SHIFT_BUCKETS,
            registry=self.registry,
        )
        self.window_label_dependence = Histogram(
            "tta_window_label_dependence_nats",
            "each closed signal window's mutual information between step and source-predicted class "
            "(bias-corrected; about 0 for i.i.d. batches, high for label-correlated ones), across streams",
            ["adapter"],
            buckets=DEPENDENCE_BUCKETS,  # non-negative: a histogram with negative buckets exports no _sum
            registry=self.registry,
        )
        self.guard_actions = Counter(
            "tta_guard_actions",
            "collapse-guard actions by adapter, reason (threshold, trend, non_finite, periodic) and action",
            ["adapter", "reason", "action"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))

    def start_guard_series(self, adapter: str, policy: str) -> None:
        """Zero series for the default adapter, so rates and alerts have data before any action."""
        self.window_label_dependence.labels(adapter)  # observed only when a window closes
        actions = {"periodic": "reset", "recovered": "resume"}
        for reason in REASONS:
            if reason != "recovered" or policy == "fallback":
                self.guard_actions.labels(adapter, reason, actions.get(reason, policy))

    def observe_transfer(self, kind: str, seconds: float) -> None:
        self.transfer_duration.labels(kind).observe(seconds)

    def observe_guard(self, adapter: str, reason: str, action: str) -> None:
        self.guard_actions.labels(adapter, reason, action).inc()

    def observe_request(self, route: str, method: str, code: int, seconds: float) -> None:
        method = method if method in HTTP_METHODS else "other"  # any token is a method to HTTP: bound it
        self.http_requests.labels(route, method, str(code)).inc()
        self.http_duration.labels(route, method).observe(seconds)

    def observe_step(
        self, adapter: str, images: int, seconds: float, signals: dict[str, float], phases: dict[str, float]
    ) -> None:
        self.step_duration.labels(adapter).observe(seconds)
        for phase, phase_seconds in phases.items():
            self.step_phase_duration.labels(adapter, phase).observe(phase_seconds)
        self.step_images.labels(adapter).observe(images)
        if "mean_entropy" in signals:
            self.batch_entropy.labels(adapter).observe(signals["mean_entropy"])
        if "mean_confidence" in signals:
            self.batch_confidence.labels(adapter).observe(signals["mean_confidence"])
        for name, histogram in (self.batch_ratios | self.batch_distances).items():
            if name in signals:
                histogram.labels(adapter).observe(signals[name])
        if "bn_shift" in signals:
            self.batch_bn_shift.labels(adapter).observe(signals["bn_shift"])
        if "label_dependence" in signals:  # only steps that closed a window have it
            self.window_label_dependence.labels(adapter).observe(signals["label_dependence"])


class _StateCollector(Collector):
    """What the services hold at scrape time: streams, memory, persistence, build."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        services = self.metrics.services
        if services is None:
            return
        settings, manager = services.settings, services.streams
        build = GaugeMetricFamily(
            "tta_build_info", "1, labelled with the version, model and device", labels=["version", "model", "device"]
        )
        build.add_metric([self.metrics.version, services.source.model_id, settings.device], 1)
        yield build
        bodies = self.metrics.in_flight
        yield GaugeMetricFamily(
            "tta_request_body_in_flight_bytes", "request bodies held by the requests in flight", value=bodies.held
        )
        yield CounterMetricFamily(
            "tta_refused_requests_overloaded",
            "requests shed (503 overloaded) because max_inflight_request_bytes of bodies were in flight",
            value=bodies.refused,
        )
        streams = GaugeMetricFamily("tta_streams", "streams by where their state is", labels=["state"])
        streams.add_metric(["in_memory"], len(manager.streams))
        streams.add_metric(["spilled"], len(manager.spilled))
        yield streams
        gauges: list[tuple[str, str, Callable[[], float]]] = [
            ("tta_state_bytes", "per-stream state held in memory", manager.state_total),
            (
                "tta_memory_in_flight_bytes",
                "working memory reserved by running steps",
                lambda: manager.budget.in_flight_bytes,
            ),
            (
                "tta_memory_budget_bytes",
                "memory_budget_bytes (0: no budget)",
                lambda: settings.memory_budget_bytes or 0,
            ),
            ("tta_ready", "1 while the server is ready (readiness probe)", lambda: float(services.is_ready())),
        ]
        if services.persistence is not None:
            failing = GaugeMetricFamily(
                "tta_streams_failing_writes",
                "streams whose last write of this kind failed (retried every pass, logged when it starts and clears)",
                labels=["operation"],
            )
            for what, count in manager.failures.failing(*WRITE_OPERATIONS).items():
                failing.add_metric([what.replace(" ", "_")], count)
            yield failing
            persistence = services.persistence
            gauges += [
                (
                    "tta_persistence_healthy",
                    "0 while snapshot writes keep failing",
                    lambda: float(persistence.healthy()),
                ),
                (
                    "tta_quarantined_snapshots",
                    "damaged or mismatched snapshot files set aside since start",
                    lambda: len(persistence.store.quarantined),
                ),
            ]
        for name, text, read in gauges:
            yield GaugeMetricFamily(name, text, value=read())
        scored = services.feedback.scored
        yield CounterMetricFamily("tta_feedback_images", "images scored by label feedback", value=scored.images)
        errors = CounterMetricFamily(
            "tta_feedback_errors", "labelled images mispredicted, by prediction", labels=["prediction"]
        )
        errors.add_metric(["adapted"], scored.adapted_errors)
        errors.add_metric(["source"], scored.source_errors)
        yield errors
        yield CounterMetricFamily(
            "tta_feedback_source_images",
            "labelled images whose source prediction was kept",
            value=scored.source_images,
        )
        for key, (name, text) in MANAGER_COUNTERS.items():
            yield CounterMetricFamily(name, text, value=manager.counters[key])
        yield from _allowlisted_streams(services)


def _allowlisted_streams(services: Services) -> Iterator[Metric]:
    """Per-stream series, only for the operator's ``metrics_streams`` (bounded cardinality)."""
    allowed = [services.streams.streams.get(sid) for sid in services.settings.metrics_streams]
    held = [stream for stream in allowed if stream is not None]
    if not services.settings.metrics_streams:
        return
    signal = GaugeMetricFamily(
        "tta_stream_signal",
        "a listed stream's label-free signals over its last closed window",
        labels=["stream", "signal"],
    )
    steps = GaugeMetricFamily(
        "tta_stream_adaptation_steps", "a listed stream's adaptation steps since its last reset", labels=["stream"]
    )
    state = GaugeMetricFamily("tta_stream_state_bytes", "a listed stream's state in memory", labels=["stream"])
    actions = CounterMetricFamily(
        "tta_stream_guard_actions", "a listed stream's guard actions by reason", labels=["stream", "reason"]
    )
    for stream in held:
        online = stream.online
        windows = online.signals.closed
        for name, value in (ratios(windows[-1]) if windows.shape[0] else {}).items():
            signal.add_metric([stream.stream_id, name], value)
        steps.add_metric([stream.stream_id], online.steps)
        state.add_metric([stream.stream_id], online.state_bytes())
        for reason, count in zip(REASONS, online.guard.counts.tolist(), strict=True):
            actions.add_metric([stream.stream_id, reason], count)
    yield from (signal, steps, state, actions)
