"""Long and hostile streams, with and without the collapse guard (``tta-bench long-streams``).

Two streams from CIFAR-10-C at severity 5, batch 64:

* recurring: the 15 domains in order, visited ``visits`` times without a reset (PeTTA's protocol
  visits them 20 times), ``n_per_visit`` images per domain and visit;
* Dirichlet: the 15 domains once, each domain's images in NOTE's label-correlated order
  (Dirichlet ``delta``; small delta: long runs of one class, which BatchNorm-based methods hate).

Each adapter runs without a guard, with ``GUARD`` and with a periodic reset (RDumb), and the frozen
source model runs once as the reference. Reported: the error per visit (per domain for the
Dirichlet stream), the mean, and the guard's actions by reason.

Each finished run is saved under ``<out>/runs/`` with the settings it ran with, and a later call
with the same settings reuses it instead of running it again: the full protocol takes hours on a
CPU, so an interrupted study resumes, and ``variants`` lets one call run a part of it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapters import SourceModel, list_adapters
from adapters.atomic import atomic_write_text
from benchmarks.evaluation.replay import ReplayConfig, replay_dataset

# Answer with the source while a window's batches are label-correlated (label_dependence above 0.1
# nats: the i.i.d. windows of these streams stay below 0.06, the label-correlated ones sit around
# 0.4; there test-batch statistics themselves are the problem, which no reset fixes) or while the
# ATC estimate says the adapted model is worse than the source (atc_gap < -0.05); resume after four
# quiet windows in a row, as a label-correlated stream has a quiet window now and then (one class
# filling a whole window). The label dependence is checked early, from a window's third step (every
# 3-5 step window of the recurring stream stays below 0.09), so the fallback starts a step sooner.
# Reset when the predictions collapse onto a class (majority_share above 0.3: healthy windows here
# stay below 0.25, and an accumulating Tent crosses it in its second visit); the ATC estimate
# cannot see that (entropy minimisation makes the model confident).
GUARD: dict[str, Any] = {
    "policy": "fallback",
    "resume_after_windows": 4,
    "thresholds": [
        {"signal": "label_dependence", "above": 0.1, "early": True},
        {"signal": "atc_gap", "below": -0.05},
        {"signal": "majority_share", "above": 0.3, "policy": "reset"},
    ],
}


def series(result: dict[str, Any], recurring: bool) -> list[float]:
    """Error per visit (recurring: tags ``domain#visit``) or per domain (in stream order)."""
    per_domain = result["per_domain_error"]
    if not recurring:
        return list(per_domain.values())
    visits: dict[int, list[float]] = {}
    for tag, error in per_domain.items():
        visits.setdefault(int(tag.rpartition("#")[2]), []).append(error)
    return [float(np.mean(visits[v])) for v in sorted(visits)]


VARIANTS = ("no guard", "guard", "periodic reset")


def _run(
    source: SourceModel, data: Path, config: ReplayConfig, adapter: str, variant: str, recurring: bool, progress: bool
) -> dict[str, Any]:
    result = replay_dataset(source, data, config, progress=progress)
    errors = series(result, recurring)
    return {
        "adapter": adapter,
        "variant": variant,
        "per_visit_error" if recurring else "per_domain_error": errors,
        "mean_error": float(np.mean(errors)),
        "guard_actions": result.get("guard", {}).get("actions", {}),
        "images_per_s": result["images_per_s"],
    }


def _load_run(saved: Path | None, key: dict[str, Any]) -> dict[str, Any] | None:
    """A run saved by an earlier call with the same settings (a damaged or other file: None). The
    saved replay settings are read through today's ReplayConfig, so an option added since then
    (at its default) does not make a finished run stale."""
    if saved is None or not saved.is_file():
        return None
    try:
        content = json.loads(saved.read_text())
        saved_key = dict(content["key"])
        saved_key["config"] = ReplayConfig.model_validate(saved_key["config"]).model_dump(mode="json")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    run: dict[str, Any] = content["run"]
    return run if saved_key == key else None


def adapter_of(label: str, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The adapter name and config behind an ``adapters`` entry."""
    config = dict(config)
    name = str(config.pop("adapter", label))
    if name not in list_adapters():
        known = ", ".join(list_adapters())
        raise ValueError(f"{label!r} is no adapter; give its config with an 'adapter' name ({known})")
    return name, config


def run_long_streams(
    source: SourceModel,
    data: Path,
    adapters: Sequence[str],
    visits: int = 20,
    n_per_visit: int = 1000,
    delta: float = 0.1,
    reset_every_steps: int = 1000,
    window_steps: int = 5,
    guard: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    variants: Sequence[str] = VARIANTS,
    adapter_configs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``adapters`` are adapter names or labels of ``adapter_configs`` (label -> the adapter's
    config, with ``"adapter": name`` where the label is not an adapter's name), e.g.
    ``{"tent-lr0.01": {"adapter": "tent", "optimizer": {"name": "adam", "lr": 0.01}}}``."""
    guard = guard or GUARD
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    chosen = {label: adapter_of(label, (adapter_configs or {}).get(label, {})) for label in adapters}
    guards: dict[str, dict[str, Any] | None] = {
        "no guard": None,
        "guard": guard,
        "periodic reset": {"reset_every_steps": reset_every_steps},
    }
    streams = {
        "recurring": {"setting": "recurring", "visits": visits, "n_per_domain": n_per_visit},
        "dirichlet": {"setting": "correlated", "delta": delta, "n_per_domain": n_per_visit},
    }
    report: dict[str, Any] = {
        "model": source.model_id,
        "visits": visits,
        "n_per_visit": n_per_visit,
        "delta": delta,
        "batch_size": 64,
        "window_steps": window_steps,
        "guard": guard,
        "reset_every_steps": reset_every_steps,
        "adapter_configs": adapter_configs or {},
        "streams": {},
    }
    for stream, settings in streams.items():
        runs = []
        plan = [("source", "source")] + [(a, v) for a in adapters for v in VARIANTS if v in variants]
        for adapter, variant in plan:
            name, adapter_config = chosen.get(adapter, ("source", {}))
            config = ReplayConfig(
                adapter=name,
                adapter_config=adapter_config,
                batch_size=64,
                window_steps=window_steps,
                guard=guards.get(variant),
                **settings,
            )
            name = f"{stream}-{adapter}-{variant.replace(' ', '-')}.json"
            saved = None if out_dir is None else out_dir / "runs" / name
            key = {"model": source.model_id, "data": str(data), "config": config.model_dump(mode="json")}
            run = _load_run(saved, key)
            if run is None:
                run = _run(source, data, config, adapter, variant, stream == "recurring", progress)
                if saved is not None:  # atomically: a killed run leaves no half-written file to reuse
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(saved, json.dumps({"key": key, "run": run}, indent=1) + "\n")
            runs.append(run)
        report["streams"][stream] = runs
    if out_dir is not None:
        write_long_stream_report(report, out_dir)
    return report


def write_long_stream_report(report: dict[str, Any], out_dir: Path) -> None:
    from benchmarks.reporting.guard_plots import plot_visit_errors

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "long_streams.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "# Long and hostile streams, with and without the collapse guard",
        "",
        f"Model `{report['model']}`, CIFAR-10-C severity 5, batch {report['batch_size']}. Recurring: the 15 domains "
        f"visited {report['visits']} times, {report['n_per_visit']} images per domain and visit, no reset. Dirichlet: "
        f"the 15 domains once, {report['n_per_visit']} images each in a label-correlated order (delta "
        f"{report['delta']}). Guard: `{json.dumps(report['guard'])}` with windows of {report['window_steps']} steps; "
        f"periodic reset every {report['reset_every_steps']} steps. Error in %.",
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
        title = (
            "recurring CIFAR-10-C: error per visit" if stream == "recurring" else "Dirichlet stream: error per domain"
        )
        plot_visit_errors(runs, out_dir / f"long_streams_{stream}.png", title, key)
    lines.append(
        "`worst vs source`: the largest excess of the run's error over the source model's on any one visit "
        "(recurring) or domain (Dirichlet); at or below 0 means never worse than not adapting."
    )
    (out_dir / "long_streams.md").write_text("\n".join(lines) + "\n")
