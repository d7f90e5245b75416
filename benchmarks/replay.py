"""Offline replay of a corruption stream through one adapter, with the online error protocol.

Each batch is predicted once by ``forward_and_adapt`` (the prediction the method's paper
returns, computed before that batch's update), then the adapter updates. The stream's order and
resets come from :mod:`benchmarks.stream_settings`; errors are reported per domain tag.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from adapters import SourceModel, create_adapter
from benchmarks.datasets.cifar10c import CORRUPTIONS
from benchmarks.stream_settings import Segment, Setting


class ReplayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: str
    adapter_config: dict[str, Any] = Field(default_factory=dict)
    setting: Setting = "continual"
    severity: int = Field(5, ge=1, le=5, description="all settings but the gradual ones")
    delta: float | None = Field(None, gt=0, description="correlated: Dirichlet delta (None: sort by label)")
    corruptions: tuple[str, ...] = CORRUPTIONS
    n_per_domain: int | None = Field(None, ge=1, description="first n images of every domain (default: all)")
    batch_size: int = Field(200, ge=1)
    seed: int = 0


def replay(
    source: SourceModel, segments: Sequence[Segment], config: ReplayConfig, progress: bool = True
) -> dict[str, Any]:
    """Run the stream; returns the result record (JSON-ready)."""
    torch.manual_seed(config.seed)
    adapter = create_adapter(config.adapter, source, {"seed": config.seed, **config.adapter_config})
    batches: list[dict[str, Any]] = []
    wrong: dict[str, int] = {}
    seen: dict[str, int] = {}
    total = sum(len(s.labels) for s in segments)
    bar = tqdm(total=total, desc=f"replay {config.adapter}", unit="img", disable=not progress)
    start = time.perf_counter()
    for segment in segments:
        if segment.reset_before:
            adapter.reset()
        for first in range(0, len(segment.labels), config.batch_size):
            last = min(first + config.batch_size, len(segment.labels))
            x = torch.from_numpy(segment.images[first:last]).permute(0, 3, 1, 2).float().div_(255)
            mistakes = adapter.forward_and_adapt(x).argmax(1).numpy() != segment.labels[first:last]
            tags = segment.tags[first:last]
            for tag in dict.fromkeys(tags.tolist()):
                mask = tags == tag
                wrong[tag] = wrong.get(tag, 0) + int(mistakes[mask].sum())
                seen[tag] = seen.get(tag, 0) + int(mask.sum())
            batches.append({"domain": str(tags[0]), "images": last - first, "errors": int(mistakes.sum())})
            bar.update(last - first)
    elapsed = time.perf_counter() - start
    bar.close()
    per_domain = {tag: wrong[tag] / seen[tag] for tag in seen}
    result: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "model": source.model_id,
        "adapter_config": adapter.config.model_dump(mode="json"),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "per_domain_error": per_domain,
        "mean_error": float(np.mean(list(per_domain.values()))),
        "error_all_images": sum(wrong.values()) / total,
        "batches": batches,
        "images": total,
        "seconds": elapsed,
        "images_per_s": total / elapsed,
        # Process-wide peak resident memory (Linux reports KiB), not a per-step measurement.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    at_five = [error for tag, error in per_domain.items() if tag.endswith("@5")]
    if at_five:
        result["mean_error_at_severity_5"] = float(np.mean(at_five))
    return result


def error_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown: adapters (rows) by domain (columns), error in %, plus the mean."""
    domains = list(results[0]["per_domain_error"])
    header = "| adapter | " + " | ".join(domains) + " | mean | img/s |"
    lines = [header, "|---" + "|---:" * (len(domains) + 2) + "|"]
    for result in results:
        cells = [f"{100 * result['per_domain_error'][d]:.1f}" for d in domains]
        lines.append(
            f"| {result['config']['adapter']} | "
            + " | ".join(cells)
            + f" | **{100 * result['mean_error']:.1f}** | {result['images_per_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_report(results: Sequence[dict[str, Any]], out_dir: Path) -> str:
    """``table.md``, ``domain_errors.png`` and ``cumulative_error.png`` in ``out_dir``."""
    from benchmarks.report_plots import plot_cumulative_error, plot_domain_errors

    out_dir.mkdir(parents=True, exist_ok=True)
    table = error_table(results)
    (out_dir / "table.md").write_text(table)
    plot_domain_errors(results, out_dir / "domain_errors.png")
    plot_cumulative_error(results, out_dir / "cumulative_error.png")
    return table
