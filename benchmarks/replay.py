"""Offline replay of a corruption stream through one adapter, with the online error protocol.

Each batch is predicted once by ``forward_and_adapt`` (the prediction the method's paper
returns, computed before that batch's update), then the adapter updates. Settings:

* ``continual``: domains in order, the adapter is reset once, at the start;
* ``reset_each_shift``: reset before every domain (single-domain TTA).
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from adapters import SourceModel, create_adapter
from benchmarks.datasets.cifar10c import CORRUPTIONS


class ReplayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: str
    adapter_config: dict[str, Any] = Field(default_factory=dict)
    setting: Literal["continual", "reset_each_shift"] = "continual"
    severity: int = Field(5, ge=1, le=5)
    corruptions: tuple[str, ...] = CORRUPTIONS
    n_per_domain: int | None = Field(None, ge=1, description="first n images of every domain (default: all)")
    batch_size: int = Field(200, ge=1)
    seed: int = 0


@dataclass(frozen=True)
class Domain:
    name: str
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)


def replay(
    source: SourceModel, domains: Sequence[Domain], config: ReplayConfig, progress: bool = True
) -> dict[str, Any]:
    """Run the stream; returns the result record (JSON-ready)."""
    torch.manual_seed(config.seed)
    adapter = create_adapter(config.adapter, source, {"seed": config.seed, **config.adapter_config})
    batches: list[dict[str, Any]] = []
    per_domain: dict[str, float] = {}
    total = sum(min(len(d.labels), config.n_per_domain or len(d.labels)) for d in domains)
    bar = tqdm(total=total, desc=f"replay {config.adapter}", unit="img", disable=not progress)
    start = time.perf_counter()
    for index, domain in enumerate(domains):
        if config.setting == "reset_each_shift" and index > 0:
            adapter.reset()
        count = min(len(domain.labels), config.n_per_domain or len(domain.labels))
        wrong = 0
        for first in range(0, count, config.batch_size):
            last = min(first + config.batch_size, count)
            x = torch.from_numpy(domain.images[first:last]).permute(0, 3, 1, 2).float().div_(255)
            y = torch.from_numpy(domain.labels[first:last])
            errors = int((adapter.forward_and_adapt(x).argmax(1) != y).sum())
            wrong += errors
            batches.append({"domain": domain.name, "images": last - first, "errors": errors})
            bar.update(last - first)
        per_domain[domain.name] = wrong / count
    elapsed = time.perf_counter() - start
    bar.close()
    return {
        "config": config.model_dump(mode="json"),
        "model": source.model_id,
        "adapter_config": adapter.config.model_dump(mode="json"),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "threads": torch.get_num_threads(),
        "per_domain_error": per_domain,
        "mean_error": float(np.mean(list(per_domain.values()))),
        "batches": batches,
        "images": total,
        "seconds": elapsed,
        "images_per_s": total / elapsed,
        # Process-wide peak resident memory (Linux reports KiB), not a per-step measurement.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


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
