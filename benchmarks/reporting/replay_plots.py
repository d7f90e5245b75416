"""Plots of replay results: error per domain per adapter, and the error-accumulation curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reporting.labels import run_label


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib: pip install 'tta-server[bench]'") from exc

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


LINE_STYLES = ("-", "--", "-.", ":")


def run_styles(count: int) -> list[dict[str, Any]]:
    """A distinct colour and line style per run (10 colours, 4 styles)."""
    plt = _pyplot()
    colours = plt.get_cmap("tab10").colors
    return [
        {"color": colours[i % len(colours)], "linestyle": LINE_STYLES[(i // len(colours) + i) % len(LINE_STYLES)]}
        for i in range(count)
    ]


def legend_label(result: dict[str, Any]) -> str:
    return f"{run_label(result)}: {100 * result['mean_error']:.1f} %"


def plot_domain_errors(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: one group per domain, one bar per run, error in %; legend (with each run's
    mean error) to the right of the axes."""
    plt = _pyplot()
    domains = list(results[0]["per_domain_error"])
    width = 0.8 / len(results)
    x = np.arange(len(domains))
    fig, ax = plt.subplots(figsize=(min(16.0, max(9.0, 0.16 * len(domains) * (len(results) + 1) + 3)), 5.4))
    for i, (result, style) in enumerate(zip(results, run_styles(len(results)), strict=True)):
        errors = [100 * result["per_domain_error"][d] for d in domains]
        hatch = {"-": None, "--": "//", "-.": "..", ":": "xx"}[style["linestyle"]]
        position = x + (i - (len(results) - 1) / 2) * width
        ax.bar(position, errors, width, label=legend_label(result), color=style["color"], hatch=hatch)
    ax.set_xticks(x, [d.replace("_", " ") for d in domains], rotation=40, ha="right")
    ax.set_ylabel("online error (%)")
    ax.set_title(f"Error per domain ({results[0]['config']['setting']}, {results[0]['model']})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", title="run: mean error", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_cumulative_error(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Cumulative online error over the stream (the error-accumulation curve), domain boundaries
    marked and each domain named on the stream axis; legend (with mean errors) outside the axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12, 5))
    for result, style in zip(results, run_styles(len(results)), strict=True):
        images = np.cumsum([b["images"] for b in result["batches"]])
        errors = np.cumsum([b["errors"] for b in result["batches"]])
        ax.plot(images, 100 * errors / images, label=legend_label(result), linewidth=1.6, **style)
    first = results[0]["batches"]
    seen = np.cumsum([b["images"] for b in first])
    starts = [0] + [int(seen[i - 1]) for i in range(1, len(first)) if first[i]["domain"] != first[i - 1]["domain"]]
    names = [first[0]["domain"]] + [
        first[i]["domain"] for i in range(1, len(first)) if first[i]["domain"] != first[i - 1]["domain"]
    ]
    for start in starts[1:]:
        ax.axvline(start, color="grey", linewidth=0.5, alpha=0.5)
    ends = [*starts[1:], int(seen[-1])]
    if len(names) <= 40:  # name each domain under its stretch of the stream
        ax.set_xticks([(a + b) / 2 for a, b in zip(starts, ends, strict=True)])
        ax.set_xticklabels(
            [n.split("@")[0].replace("_", " ") for n in names], rotation=40, ha="right", fontsize="small"
        )
        ax.set_xlabel(f"stream ({int(seen[-1]):,} images; domain boundaries in grey)")
    else:
        ax.set_xlabel("images seen")
    ax.set_ylabel("cumulative online error (%)")
    ax.set_title("Error accumulation over the stream")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", title="run: mean error", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
