"""Plots of the observability benchmarks: signal correlations, and error and signals per visit of long streams."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reporting.replay_plots import _pyplot


def plot_signals_vs_error(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Heat map: Spearman correlation of each signal (columns) with the error, per adapter (rows)."""
    plt = _pyplot()
    signals = sorted({s for row in rows for s in row["spearman"]})
    values = np.array([[row["spearman"].get(s, np.nan) for s in signals] for row in rows])
    fig, ax = plt.subplots(figsize=(1.0 * len(signals) + 2.5, 0.55 * len(rows) + 2.2))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(
                j,
                i,
                f"{value:+.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if abs(value) > 0.6 else "black",
            )
    ax.set_xticks(range(len(signals)), signals, rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), [f"{r['adapter']} ({100 * r['mean_error']:.1f} %)" for r in rows])
    ax.set_title("Spearman correlation of each label-free signal with the per-domain online error")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Spearman rho")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_visit_errors(runs: Sequence[dict[str, Any]], path: Path, title: str, key: str = "per_visit_error") -> Path:
    """Error per visit (or domain), one line per run (colour: adapter, style: variant), mean in the legend."""
    plt = _pyplot()
    adapters = list(dict.fromkeys(run["adapter"] for run in runs))
    colours = {a: plt.get_cmap("tab10")(i) for i, a in enumerate(adapters)}
    styles = {"no guard": "-", "guard": "--", "periodic reset": ":", "source": "-"}
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for run in runs:
        errors = 100 * np.asarray(run[key])
        visits = np.arange(1, len(errors) + 1)
        colour = "black" if run["variant"] == "source" else colours[run["adapter"]]
        label = run["adapter"] if run["variant"] == "source" else f"{run['adapter']}, {run['variant']}"
        ax.plot(
            visits,
            errors,
            styles[run["variant"]],
            color=colour,
            marker="o",
            ms=3,
            lw=1.6,
            label=f"{label} (mean {errors.mean():.1f} %)",
        )
    if key == "per_visit_error":
        ax.set_xlabel("visit of the 15 domains")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("online error per visit (%)")
    else:
        from benchmarks.data.cifar10c import CORRUPTIONS

        ax.set_xticks(
            range(1, len(CORRUPTIONS) + 1), [c.replace("_", " ") for c in CORRUPTIONS], rotation=40, ha="right"
        )
        ax.set_ylabel("online error per domain (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_signal_trends(runs: Sequence[dict[str, Any]], path: Path, title: str, key: str = "per_visit_error") -> Path:
    """One panel per quantity: the error, then each signal that moves, per visit (or domain); one
    line per adapted run, so a signal's trend is read against the error's."""
    plt = _pyplot()
    adapted = [run for run in runs if run["variant"] != "source" and run.get("signals")]
    moving = [
        name
        for name in dict.fromkeys(name for run in adapted for name in run["signals"])
        if any(np.ptp(run["signals"].get(name, [0.0])) > 0 for run in adapted)
    ]
    panels = ["error (%)", *moving]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.5 * rows), squeeze=False)
    colours = {a: plt.get_cmap("tab10")(i) for i, a in enumerate(dict.fromkeys(run["adapter"] for run in adapted))}
    for ax, panel in zip(axes.flat, panels, strict=False):
        for run in adapted:
            values = 100 * np.asarray(run[key]) if panel == "error (%)" else run["signals"].get(panel)
            if values is not None:
                ax.plot(
                    np.arange(1, len(values) + 1),
                    values,
                    color=colours[run["adapter"]],
                    lw=1.4,
                    label=f"{run['adapter']}, {run['variant']}",
                )
        ax.set_title(panel, fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title)
    fig.supxlabel("visit of the 15 domains" if key == "per_visit_error" else "domain in stream order", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
