"""The long-stream study's Markdown table, JSON and per-visit plots (``tta-bench long-streams``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import bootstrap

from adapters.blocks.signals import SIGNALS
from benchmarks.evaluation.signals_vs_truth import spearman_with
from benchmarks.reporting.guard_plots import plot_signal_trends, plot_visit_errors

DATA = {
    "test": "CIFAR-10-C",
    "holdout": "the validation stream (the model's held-out train images, corrupted as CIFAR-10-C)",
}


def write_long_stream_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "long_streams.json").write_text(json.dumps(report, indent=1) + "\n")
    ran = {run["variant"] for runs in report["streams"].values() for run in runs}
    described = {
        "recurring": f"Recurring: the 15 domains visited {report['visits']} times, {report['n_per_visit']} images per "
        "domain and visit, no reset.",
        "dirichlet": f"Dirichlet: the 15 domains once, {report['n_per_visit']} images each in a label-correlated "
        f"order (delta {report['delta']}).",
    }
    settings = [described[stream] for stream in report["streams"]]
    if "guard" in ran:
        settings.append(f"Guard: `{json.dumps(report['guard'])}` with windows of {report['window_steps']} steps.")
    if "periodic reset" in ran:
        settings.append(f"Periodic reset every {report['reset_every_steps']} steps.")
    if report.get("source_signals"):
        settings.append("Every adapted run records the signals against the frozen source.")
    lines = [
        "# Long and hostile streams, with and without the collapse guard",
        "",
        f"Model `{report['model']}`, {DATA.get(report.get('split', 'test'), 'CIFAR-10-C')}, severity 5, "
        f"batch {report['batch_size']}. " + " ".join(settings) + " Error in %.",
        "",
    ]
    for label, config in report.get("adapter_configs", {}).items():
        lines[-1:-1] = [f"`{label}`: `{json.dumps(config)}`.", ""]
    for stream, runs in report["streams"].items():
        key = "per_visit_error" if stream == "recurring" else "per_domain_error"
        source = runs[0][key]
        lines += [
            f"## {stream}",
            "",
            "| adapter | variant | mean | worst vs source | actions | img/s |",
            "|---|---|---:|---:|---|---:|",
        ]
        for run in runs:
            worst = max(100 * (e - s) for e, s in zip(run[key], source, strict=True))
            actions = ", ".join(f"{k} {v}" for k, v in run["guard_actions"].items()) or "-"
            lines.append(
                f"| {run['adapter']} | {run['variant']} | {100 * run['mean_error']:.1f} | {worst:+.1f} | {actions} | "
                f"{run['images_per_s']:.0f} |"
            )
        lines.append("")
        lines.append(f"![{stream}](long_streams_{stream}.png)")
        lines.append("")
        trends = _signal_table(runs, key, "visit" if stream == "recurring" else "domain")
        if trends:
            picture = plot_signal_trends(
                runs, out_dir / f"long_streams_{stream}_signals.png", f"{stream}: signals", key
            )
            trends[-1:-1] = ["", f"![{stream} signals]({picture.name})"]
        lines += trends
        if stream == "recurring":
            lines += guard_vs_periodic_table(runs, key)
        title = (
            "recurring CIFAR-10-C: error per visit" if stream == "recurring" else "Dirichlet stream: error per domain"
        )
        plot_visit_errors(runs, out_dir / f"long_streams_{stream}.png", title, key)
    lines.append(
        "`worst vs source`: the largest excess of the run's error over the source model's on any one visit "
        "(recurring) or domain (Dirichlet); at or below 0 means never worse than not adapting."
    )
    (out_dir / "long_streams.md").write_text("\n".join(lines) + "\n")


def _signal_table(runs: list[dict[str, Any]], key: str, unit: str) -> list[str]:
    """Each adapted run's signals: first and last value per visit (domain) and the Spearman
    correlation of the series with the run's error series."""
    adapted = [run for run in runs if run.get("signals") and run["variant"] != "source"]
    if not adapted:
        return []
    names = [name for name in SIGNALS if any(name in run["signals"] for run in adapted)]
    lines = [
        f"Signals per {unit}: first -> last {unit}'s mean (Spearman with the error per {unit}).",
        "",
        "| signal | " + " | ".join(f"{run['adapter']} {run['variant']}" for run in adapted) + " |",
        "|---|" + "---:|" * len(adapted),
    ]
    correlations = [spearman_with(run[key], run["signals"]) for run in adapted]
    for name in names:
        cells = []
        for run, rhos in zip(adapted, correlations, strict=True):
            values, rho = run["signals"].get(name), rhos.get(name)
            cell = "-" if values is None else f"{values[0]:.3f} -> {values[-1]:.3f}"
            cells.append(cell if rho is None else f"{cell} ({rho:+.2f})")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return [*lines, ""]


def paired_difference(first: list[float], second: list[float]) -> tuple[float, float, float]:
    """Mean of ``first - second`` per visit, in points, with a 95 % bootstrap interval over visits
    (BCa; visits of one run are not independent, so read it as a guide, not a test)."""
    difference = 100 * (np.asarray(first) - np.asarray(second))
    mean = float(difference.mean())
    if np.ptp(difference) == 0:  # identical runs, or a constant shift: no spread to resample
        return mean, mean, mean
    interval = bootstrap((difference,), np.mean, confidence_level=0.95, n_resamples=9999, random_state=0)
    return mean, float(interval.confidence_interval.low), float(interval.confidence_interval.high)


def guard_vs_periodic_table(runs: list[dict[str, Any]], key: str) -> list[str]:
    """Per adapter run with both variants: is the guard's mean error per visit below periodic reset's?"""
    by_variant = {(run["adapter"], run["variant"]): run for run in runs}
    rows = []
    for adapter in dict.fromkeys(run["adapter"] for run in runs):
        guard, periodic = by_variant.get((adapter, "guard")), by_variant.get((adapter, "periodic reset"))
        if guard is None or periodic is None:
            continue
        mean, low, high = paired_difference(guard[key], periodic[key])
        verdict = "guard better" if high < 0 else "periodic better" if low > 0 else "no difference"
        rows.append(f"| {adapter} | {mean:+.3f} | [{low:+.3f}, {high:+.3f}] | {verdict} |")
    if not rows:
        return []
    return [
        "Guard minus periodic reset, error per visit in points: mean and 95 % bootstrap interval over visits.",
        "",
        "| adapter | mean | 95 % interval | reading |",
        "|---|---:|---:|---|",
        *rows,
        "",
    ]
