"""Equal error: the default (fast) path of each adapter against its exact fp32 baseline.

Both paths replay the same continual CIFAR-10-C stream (same images, order and seed) in process;
the table gives each path's mean online error, the difference, the largest per-domain difference
and the images/s of both runs. The target is a mean difference within ``TOLERANCE_POINTS``.
Writes ``equal_error.json`` and ``.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from adapters import SourceModel
from benchmarks.evaluation.replay import ReplayConfig, replay_dataset
from benchmarks.performance.adapter_speed import BASELINE, baseline_config
from benchmarks.reporting.results import write_result

TOLERANCE_POINTS = 0.3


def run_equal_error(
    source: SourceModel,
    data: Path,
    adapters: list[str],
    n_per_domain: dict[str, int],
    batch_size: int,
    out_dir: Path,
    baseline: dict[str, Any] | None = None,
) -> str:
    baseline = BASELINE if baseline is None else baseline
    rows: list[dict[str, Any]] = []
    for name in adapters:
        runs = {}
        for path, config in (("baseline", baseline_config(name, {}, baseline)), ("default", {})):
            replay_config = ReplayConfig(
                adapter=name, adapter_config=config, n_per_domain=n_per_domain[name], batch_size=batch_size
            )
            runs[path] = replay_dataset(source, data, replay_config)
        old, new = runs["baseline"], runs["default"]
        differences = {
            domain: 100 * (new["per_domain_error"][domain] - error) for domain, error in old["per_domain_error"].items()
        }
        worst = max(differences, key=lambda d: abs(differences[d]))
        rows.append(
            {
                "adapter": name,
                "n_per_domain": n_per_domain[name],
                "baseline_config": baseline_config(name, {}, baseline),
                "default_precision": new["adapter_config"]["precision"],
                "baseline_mean_error": old["mean_error"],
                "default_mean_error": new["mean_error"],
                "difference_points": 100 * (new["mean_error"] - old["mean_error"]),
                "per_domain_difference_points": differences,
                "largest_domain_difference": {"domain": worst, "points": differences[worst]},
                "baseline_images_per_s": old["images_per_s"],
                "default_images_per_s": new["images_per_s"],
            }
        )
    result = {
        "model": source.model_id,
        "command": " ".join(["tta-bench", *sys.argv[1:]]),
        "batch_size": batch_size,
        "tolerance_points": TOLERANCE_POINTS,
        "rows": rows,
    }
    return write_result(
        out_dir,
        "equal_error",
        result,
        f"Equal error: default path vs exact fp32 baseline ({source.model_id})",
        f"`{result['command']}` — continual CIFAR-10-C, severity 5, the 15 domains in the standard order, batch "
        f"{batch_size}, the same images and seed for both paths; error in %. Target: mean difference within "
        f"{TOLERANCE_POINTS} points. Throughput is of whole replays run one after the other (not interleaved: see "
        "adapter_speed.md for side-by-side speed).",
        [
            "adapter",
            "images/domain",
            "baseline mean",
            "default mean",
            "difference",
            "largest domain difference",
            "baseline img/s",
            "default img/s",
        ],
        [
            [
                str(r["adapter"]),
                str(r["n_per_domain"]),
                f"{100 * r['baseline_mean_error']:.2f}",
                f"{100 * r['default_mean_error']:.2f}",
                f"{r['difference_points']:+.2f}",
                f"{r['largest_domain_difference']['points']:+.2f} ({r['largest_domain_difference']['domain']})",
                f"{r['baseline_images_per_s']:.0f}",
                f"{r['default_images_per_s']:.0f}",
            ]
            for r in rows
        ],
    )
