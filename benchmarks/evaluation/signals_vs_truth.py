"""How well each label-free signal tracks the true online error, per adapter (``tta-bench signals``).

Every adapter replays continual CIFAR-10-C with the signals on (the same OnlineStream the server
runs). Per domain, each signal's mean over the domain's batches is set against the domain's true
online error: the Spearman rank correlation over the domains says whether the signal orders the
domains as the error does (the sign says in which direction). The ATC estimates are accuracy
estimators, so their mean absolute error against the true accuracy is reported too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from adapters import SourceModel
from adapters.blocks.signals import SIGNALS
from adapters.model_signals import dropout_rate_of
from benchmarks.evaluation.replay import ReplayConfig, replay_dataset

# signal -> whose accuracy it estimates
ESTIMATORS = {"atc_accuracy": "adapted", "atc_accuracy_source": "source", "dropout_accuracy": "adapted"}


def per_domain_signals(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each domain's mean of every signal over its batches (batches of equal size)."""
    sums: dict[str, dict[str, list[float]]] = {}
    for batch in result["batches"]:
        domain = sums.setdefault(batch["domain"], {})
        for name, value in batch.get("signals", {}).items():
            domain.setdefault(name, []).append(value)
    return {d: {k: float(np.mean(v)) for k, v in values.items()} for d, values in sums.items()}


def spearman_with(errors: Sequence[float], signals: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Spearman correlation of each signal's series with the error series; constant series (no
    ranking) are left out."""
    if np.ptp(np.asarray(errors, dtype=float)) == 0:
        return {}
    return {
        name: float(spearmanr(values, errors).statistic)
        for name, values in signals.items()
        if np.ptp(np.asarray(values, dtype=float)) > 0
    }


def correlations(result: dict[str, Any], source_error: dict[str, float]) -> dict[str, Any]:
    """Spearman correlation of each signal with the per-domain error, and the estimators' errors."""
    domains = list(result["per_domain_error"])
    errors = np.array([result["per_domain_error"][d] for d in domains])
    signals = per_domain_signals(result)
    complete = {
        name: [signals[d][name] for d in domains] for name in SIGNALS if all(name in signals[d] for d in domains)
    }
    rho = spearman_with(errors.tolist(), complete)
    mae = {}
    for name, whose in ESTIMATORS.items():
        truth = errors if whose == "adapted" else np.array([source_error[d] for d in domains])
        estimates = [signals[d].get(name) for d in domains]
        if all(v is not None for v in estimates):
            mae[name] = float(np.mean(np.abs((1 - np.asarray(estimates, dtype=float)) - truth)))
    best = max(rho, key=lambda k: abs(rho[k])) if rho else None
    return {
        "adapter": result["config"]["adapter"],
        "mean_error": result["mean_error"],
        "spearman": rho,
        "best_signal": best,
        "estimator_mae": mae,
        "per_domain": {d: {"error": result["per_domain_error"][d], **signals[d]} for d in domains},
    }


def run_signals_vs_truth(
    source: SourceModel,
    data: Path,
    adapters: Sequence[str],
    n_per_domain: int = 2000,
    batch_size: int = 200,
    out_dir: Path | None = None,
    progress: bool = True,
    dropout_estimate: bool = False,
) -> dict[str, Any]:
    runs = {}
    for name in dict.fromkeys(["source", *adapters]):  # the source run gives the source's true error
        config = ReplayConfig(
            adapter=name,
            n_per_domain=n_per_domain,
            batch_size=batch_size,
            source_signals=True,
            dropout_estimate=dropout_estimate,
        )
        runs[name] = replay_dataset(source, data, config, progress=progress)
    source_error = runs["source"]["per_domain_error"]
    rows = [correlations(runs[name], source_error) for name in adapters]
    report = {
        "model": source.model_id,
        "n_per_domain": n_per_domain,
        "batch_size": batch_size,
        "dropout_estimate": dropout_estimate,
        **({"dropout_rate": dropout_rate_of(source)} if dropout_estimate else {}),
        "images_per_s": {name: run["images_per_s"] for name, run in runs.items()},
        "data": runs["source"].get("data"),
        "rows": rows,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "signals_vs_truth.json").write_text(json.dumps(report, indent=1) + "\n")
        (out_dir / "signals_vs_truth.md").write_text(signals_table(report))
        from benchmarks.reporting.guard_plots import plot_signals_vs_error

        plot_signals_vs_error(rows, out_dir / "signals_vs_truth.png")
    return report


def signals_table(report: dict[str, Any]) -> str:
    shown = [s for s in SIGNALS if any(s in row["spearman"] for row in report["rows"])]
    dropout = bool(report.get("dropout_estimate"))
    rate = f" at rate {report['dropout_rate']}" if "dropout_rate" in report else ""
    lines = [
        "# Label-free signals against the true online error",
        "",
        f"Continual CIFAR-10-C, severity 5, the first {report['n_per_domain']} images of each of the 15 domains, "
        f"batch {report['batch_size']}, model `{report['model']}`. Spearman rank correlation over the 15 domains "
        "between each signal's per-domain mean and the true per-domain online error (sign: direction). "
        "MAE: mean absolute error of an ATC estimate (1 - estimated accuracy) against the true per-domain error "
        "of the model it estimates, in points" + (f" (and of the dropout estimate{rate}, DO MAE)." if dropout else "."),
        "",
        "| adapter | mean error | "
        + " | ".join(shown)
        + " | best | ATC MAE adapted | ATC MAE source |"
        + (" DO MAE |" if dropout else ""),
        "|---|---:|" + "---:|" * len(shown) + "---|---:|---:|" + ("---:|" if dropout else ""),
    ]
    for row in report["rows"]:
        cells = [f"{row['spearman'][s]:+.2f}" if s in row["spearman"] else "-" for s in shown]
        mae = row["estimator_mae"]
        best = row["best_signal"]
        lines.append(
            f"| {row['adapter']} | {100 * row['mean_error']:.1f} | "
            + " | ".join(cells)
            + f" | {best} ({row['spearman'][best]:+.2f}) | {100 * mae.get('atc_accuracy', float('nan')):.1f} | "
            f"{100 * mae.get('atc_accuracy_source', float('nan')):.1f} |"
            + (f" {100 * mae.get('dropout_accuracy', float('nan')):.1f} |" if dropout else "")
        )
    return "\n".join(lines) + "\n"
