"""Plots of replay results: error per domain per adapter, and the error-accumulation curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.replay import run_label


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib: pip install 'tta-server[bench]'") from exc

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_domain_errors(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: one group per domain, one bar per adapter, error in %."""
    plt = _pyplot()
    domains = list(results[0]["per_domain_error"])
    width = 0.8 / len(results)
    x = np.arange(len(domains))
    fig, ax = plt.subplots(figsize=(min(18.0, max(8.0, 0.25 * len(domains) * (len(results) + 1))), 4.5))
    for i, result in enumerate(results):
        errors = [100 * result["per_domain_error"][d] for d in domains]
        label = f"{run_label(result)} ({100 * result['mean_error']:.1f} %)"
        ax.bar(x + (i - (len(results) - 1) / 2) * width, errors, width, label=label)
    ax.set_xticks(x, domains, rotation=45, ha="right")
    ax.set_ylabel("online error (%)")
    ax.set_title(f"Error per domain ({results[0]['config']['setting']}, {results[0]['model']})")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_cumulative_error(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Cumulative online error over the stream (the error-accumulation curve), domain changes marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for result in results:
        images = np.cumsum([b["images"] for b in result["batches"]])
        errors = np.cumsum([b["errors"] for b in result["batches"]])
        ax.plot(images, 100 * errors / images, label=run_label(result))
    first = results[0]["batches"]
    seen = np.cumsum([b["images"] for b in first])
    for index in range(1, len(first)):
        if first[index]["domain"] != first[index - 1]["domain"]:
            ax.axvline(seen[index - 1], color="grey", linewidth=0.5, alpha=0.5)
    ax.set_xlabel("images seen")
    ax.set_ylabel("cumulative online error (%)")
    ax.set_title("Error accumulation over the stream")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
