"""Replay sweeps over (adapter x setting x seed): one process after another, or as Ray tasks.

``tta-bench sweep --adapters tent,cotta --settings continual,reset_each_shift --seeds 0,1`` runs
every point with the same replay as ``tta-bench replay``. With ``--ray-address`` (``auto``, a
``ray://`` URL, or ``local`` for a runtime started here) each point is one Ray task; Ray is an
optional extra (``pip install 'tta-server[ray]'``). Each point pins its torch thread count, so a
point gives the same numbers wherever it runs: the sweep's ``results`` are identical either way
(timings, which differ, are kept apart under ``timing``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TIMING = ("seconds", "images_per_s", "peak_rss_bytes", "threads", "versions")


def sweep_points(adapters: Sequence[str], settings: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    return [{"adapter": a, "setting": s, "seed": seed} for a, s, seed in itertools.product(adapters, settings, seeds)]


def run_point(model: str, data: str, point: dict[str, Any], base: dict[str, Any], threads: int) -> dict[str, Any]:
    """One replay (in whichever process runs it); returns (result, timing)."""
    import torch

    from adapters import create_source_model
    from benchmarks.evaluation.replay import ReplayConfig, replay_dataset

    torch.set_num_threads(threads)
    config = ReplayConfig(**{**base, **point})
    result = replay_dataset(create_source_model(model), Path(data), config, progress=False)
    timing = {key: result.pop(key) for key in TIMING if key in result}
    return {"point": point, "result": result, "timing": timing}


def run_sweep(
    model: str,
    data: Path,
    points: Sequence[dict[str, Any]],
    base: dict[str, Any] | None = None,
    ray_address: str | None = None,
    threads: int = 1,
    out: Path | None = None,
) -> dict[str, Any]:
    base = base or {}
    args = (model, str(data.resolve()))
    if ray_address is None:
        runs = [run_point(*args, point, base, threads) for point in points]
    else:
        try:
            import ray
        except ImportError as exc:
            raise SystemExit("--ray-address needs Ray: pip install 'tta-server[ray]'") from exc
        local = ray_address == "local"
        options: dict[str, Any] = {"num_cpus": max(2, threads), "include_dashboard": False} if local else {}
        ray.init(address=None if local else ray_address, ignore_reinit_error=True, log_to_driver=False, **options)
        try:
            task = ray.remote(num_cpus=threads)(run_point)
            runs = ray.get([task.remote(*args, point, base, threads) for point in points])
        finally:
            if local:  # a runtime started here ends here
                ray.shutdown()
    sweep = {
        "model": model,
        "base": base,
        "engine": "ray" if ray_address else "sequential",
        "results": [{"point": run["point"], **run["result"]} for run in runs],
        "timing": [{"point": run["point"], **run["timing"]} for run in runs],
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.json").write_text(json.dumps(sweep, indent=1) + "\n")
        (out / "sweep.md").write_text(sweep_table(sweep))
    return sweep


def sweep_table(sweep: dict[str, Any]) -> str:
    lines = [
        f"# Sweep ({sweep['engine']}), model `{sweep['model']}`",
        "",
        "| adapter | setting | seed | mean error | s |",
        "|---|---|---:|---:|---:|",
    ]
    for result, timing in zip(sweep["results"], sweep["timing"], strict=True):
        point = result["point"]
        lines.append(
            f"| {point['adapter']} | {point['setting']} | {point['seed']} | {100 * result['mean_error']:.1f} | "
            f"{timing.get('seconds', 0):.1f} |"
        )
    return "\n".join(lines) + "\n"
