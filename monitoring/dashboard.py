"""The Grafana dashboard, as code (grafana-foundation-sdk): ``python -m monitoring.dashboard``
writes ``helm/tta-server/files/dashboard.json`` (the file the Helm chart's ConfigMap embeds); a test
regenerates it and fails on any drift.

Every panel's queries are listed in :data:`PANELS`, so tests (and the PNG renderer) can run them
against a real Prometheus.
"""

# ruff: noqa: E501  (PromQL queries read best on one line each)
from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

UID = "tta-server-overview"
OUT = Path(__file__).resolve().parent.parent / "helm" / "tta-server" / "files" / "dashboard.json"
SEL = 'instance=~"$instance"'
ADAPTER = f'{SEL}, adapter=~"$adapter"'
RATE = "$__rate_interval"


def mean_of(histogram: str) -> str:
    """The mean of a histogram's observations per adapter over the rate window."""
    return (
        f"sum by (adapter) (rate({histogram}_sum{{{ADAPTER}}}[{RATE}]))"
        f" / sum by (adapter) (rate({histogram}_count{{{ADAPTER}}}[{RATE}]))"
    )


# (title, unit, [(expression, legend)], description)
PANELS: list[tuple[str, str, list[tuple[str, str]], str]] = [
    ("Requests per second", "reqps", [(f"sum by (route) (rate(tta_http_requests_total{{{SEL}}}[{RATE}]))", "{{route}}")],
     "HTTP throughput by route template"),
    ("Predict latency", "s", [
        (f'histogram_quantile(0.5, sum by (le) (rate(tta_http_request_duration_seconds_bucket{{{SEL}, route="/v1/predict"}}[{RATE}])))', "p50"),
        (f'histogram_quantile(0.99, sum by (le) (rate(tta_http_request_duration_seconds_bucket{{{SEL}, route="/v1/predict"}}[{RATE}])))', "p99"),
    ], "POST /v1/predict latency quantiles"),
    ("Errors by status", "reqps", [(f'sum by (code) (rate(tta_http_requests_total{{{SEL}, code=~"4..|5.."}}[{RATE}]))', "{{code}}")],
     "4xx: bad input; 503: no room (stream limit, memory budget)"),
    ("Adaptation steps per second", "ops", [(f"sum by (adapter) (rate(tta_step_duration_seconds_count{{{ADAPTER}}}[{RATE}]))", "{{adapter}}")],
     "stream steps (predict, and adapt once enough images are buffered)"),
    ("Step duration p99", "s", [(f"histogram_quantile(0.99, sum by (le, adapter) (rate(tta_step_duration_seconds_bucket{{{ADAPTER}}}[{RATE}])))", "{{adapter}}")],
     "one step on the model pool"),
    ("Step time by phase", "s", [(f"sum by (phase) (rate(tta_step_phase_duration_seconds_sum{{{ADAPTER}}}[{RATE}])) / sum by (phase) (rate(tta_step_phase_duration_seconds_count{{{ADAPTER}}}[{RATE}]))", "{{phase}}")],
     "mean seconds per step: queue (behind earlier work, the budget, the pool), adapt, source_forward (behind the signals; signal_precision), signals and guard"),
    ("Streams", "short", [(f"sum by (state) (tta_streams{{{SEL}}})", "{{state}}")], "held in memory and spilled to the store"),
    ("Memory budget", "bytes", [
        (f"sum(tta_state_bytes{{{SEL}}})", "stream states"),
        (f"sum(tta_memory_in_flight_bytes{{{SEL}}})", "running steps"),
        (f"sum(tta_memory_budget_bytes{{{SEL}}})", "budget"),
        (f"sum(tta_request_body_in_flight_bytes{{{SEL}}})", "request bodies"),
    ], "stream states plus reserved working memory against memory_budget_bytes; request bodies in flight "
       "(bounded by max_inflight_request_bytes)"),
    ("Agreement with the source model", "percentunit", [(mean_of("tta_batch_source_agreement_ratio"), "{{adapter}}")],
     "falling: adapted predictions drift from the frozen source model (error accumulation)"),
    ("Estimated accuracy (ATC)", "percentunit", [
        (mean_of("tta_batch_atc_accuracy_ratio"), "adapted {{adapter}}"),
        (mean_of("tta_batch_atc_accuracy_source_ratio"), "source {{adapter}}"),
    ], "label-free accuracy estimates of the adapted and the source predictions; adapted below source: adaptation hurts"),
    ("Entropy and confidence", "short", [
        (mean_of("tta_batch_mean_entropy_nats"), "entropy {{adapter}}"),
        (mean_of("tta_batch_mean_confidence_ratio"), "confidence {{adapter}}"),
    ], "the adapted model's own certainty: no error signal alone (entropy minimisation makes it confident)"),
    ("Collapse", "percentunit", [
        (mean_of("tta_batch_majority_share_ratio"), "majority share {{adapter}}"),
        (mean_of("tta_batch_marginal_entropy_ratio"), "marginal entropy {{adapter}}"),
    ], "share of the most predicted class, and entropy of the mean prediction (1: uniform)"),
    ("Input drift (BatchNorm statistics shift)", "short", [(mean_of("tta_batch_bn_shift_nats"), "{{adapter}}")],
     "batch statistics against the source model's BatchNorm statistics (Gaussian KL, nats): 0 on source-like data"),
    ("Label-correlated batches (label dependence)", "short", [
        (mean_of("tta_window_label_dependence_nats"), "{{adapter}}"),
    ], "per signal window: information between step and source-predicted class (nats); about 0 for i.i.d. traffic, "
       "high when batches hold few classes at a time, where test-batch statistics hurt"),
    ("Guard actions", "ops", [
        (f"sum by (reason, action) (rate(tta_guard_actions_total{{{ADAPTER}}}[{RATE}]))", "{{action}} ({{reason}})"),
    ], "the collapse guard resetting, rolling back or pausing streams, by trigger"),
    ("Online error from label feedback", "percentunit", [
        (f'sum(rate(tta_feedback_errors_total{{{SEL}, prediction="adapted"}}[{RATE}])) / sum(rate(tta_feedback_images_total{{{SEL}}}[{RATE}]))', "adapted"),
        (f'sum(rate(tta_feedback_errors_total{{{SEL}, prediction="source"}}[{RATE}])) / sum(rate(tta_feedback_source_images_total{{{SEL}}}[{RATE}]))', "source"),
    ], "where labels come back (POST /v1/streams/{id}/feedback): the true error of adapted and source predictions"),
    ("Spills, wakes, refusals, undone steps", "ops", [
        (f"sum(rate(tta_stream_spills_total{{{SEL}}}[{RATE}]))", "spills"),
        (f"sum(rate(tta_stream_wakes_total{{{SEL}}}[{RATE}]))", "wakes"),
        (f"sum(rate(tta_refused_steps_memory_budget_total{{{SEL}}}[{RATE}]))", "refused (budget)"),
        (f"sum(rate(tta_refused_steps_too_large_total{{{SEL}}}[{RATE}]))", "refused (too large)"),
        (f"sum(rate(tta_refused_requests_overloaded_total{{{SEL}}}[{RATE}]))", "shed (overloaded)"),
        (f"sum(rate(tta_diverged_steps_total{{{SEL}}}[{RATE}]))", "diverged, undone"),
    ], "memory-budget activity, requests shed for bodies in flight, and contained divergence"),
    ("Persistence", "short", [
        (f"min(tta_persistence_healthy{{{SEL}}})", "healthy"),
        (f"sum(tta_quarantined_snapshots{{{SEL}}})", "quarantined files"),
        (f"sum(increase(tta_snapshot_failures_total{{{SEL}}}[{RATE}]))", "snapshot failures"),
    ], "snapshot store health (GET /v1/persistence has the details)"),
]  # fmt: skip


def build() -> dict[str, object]:
    board = (
        dashboard.Dashboard("tta-server")
        .uid(UID)
        .tags(["tta-server", "test-time adaptation"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("instance")
            .label("Instance")
            .datasource(DataSourceRef(type_val="prometheus", uid="${datasource}"))
            .query("label_values(tta_build_info, instance)")
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
        .with_variable(
            dashboard.QueryVariable("adapter")
            .label("Adapter")
            .datasource(DataSourceRef(type_val="prometheus", uid="${datasource}"))
            .query("label_values(tta_step_duration_seconds_count, adapter)")
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    for title, unit, queries, description in PANELS:
        panel = (
            timeseries.Panel()
            .title(title)
            .description(description)
            .unit(unit)
            .datasource(DataSourceRef(type_val="prometheus", uid="${datasource}"))
            .height(8)
            .span(12)
        )
        for ref, (expression, legend) in enumerate(queries):
            panel = panel.with_target(
                prometheus.Dataquery().expr(expression).legend_format(legend).ref_id(chr(65 + ref))
            )
        board = board.with_panel(panel)
    encoded: dict[str, object] = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(board.build()))
    return encoded


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
