"""Long and hostile streams, with and without the collapse guard (``tta-bench long-streams``).

Two streams from CIFAR-10-C at severity 5, batch 64:

* recurring: the 15 domains in order, visited ``visits`` times without a reset (PeTTA's protocol
  visits them 20 times), ``n_per_visit`` images per domain and visit;
* Dirichlet: the 15 domains once, each domain's images in NOTE's label-correlated order
  (Dirichlet ``delta``; small delta: long runs of one class, which BatchNorm-based methods hate).

Each adapter runs without a guard, with ``GUARD`` and with a periodic reset (RDumb), and the frozen
source model runs once as the reference. Reported: the error per visit (per domain for the
Dirichlet stream), the mean, the guard's actions by reason, and each label-free signal's mean per
visit (domain) with its Spearman correlation with the error: the trend a guard has to go by.
``streams`` and ``variants`` choose a part of the study.

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
from adapters.blocks.signals import SIGNALS
from benchmarks.evaluation.replay import ReplayConfig, built_with, replay_dataset
from benchmarks.evaluation.signals_vs_truth import per_domain_signals

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


def _per_visit(per_tag: dict[str, float], recurring: bool) -> list[float]:
    """Values per domain tag -> per visit (recurring: tags ``domain#visit``, the mean over the
    visit's domains) or per domain (in stream order)."""
    if not recurring:
        return list(per_tag.values())
    visits: dict[int, list[float]] = {}
    for tag, value in per_tag.items():
        visits.setdefault(int(tag.rpartition("#")[2]), []).append(value)
    return [float(np.mean(visits[v])) for v in sorted(visits)]


def series(result: dict[str, Any], recurring: bool) -> list[float]:
    """Error per visit (recurring) or per domain (in stream order)."""
    return _per_visit(result["per_domain_error"], recurring)


def signal_series(result: dict[str, Any], recurring: bool) -> dict[str, list[float]]:
    """Each label-free signal's mean per visit (or domain), aligned with ``series``: the trend a
    guard watching a long stream has to go by. Signals missing on some domain are left out."""
    per_tag = per_domain_signals(result)
    tags = list(result["per_domain_error"])
    names = [name for name in SIGNALS if all(name in per_tag.get(tag, {}) for tag in tags)]
    return {name: _per_visit({tag: per_tag[tag][name] for tag in tags}, recurring) for name in names}


VARIANTS = ("no guard", "guard", "periodic reset")
STREAMS = ("recurring", "dirichlet")


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
        "signals": signal_series(result, recurring),
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
    streams: Sequence[str] = STREAMS,
    source_signals: bool = False,
) -> dict[str, Any]:
    """``adapters`` are adapter names or labels of ``adapter_configs`` (label -> the adapter's
    config, with ``"adapter": name`` where the label is not an adapter's name), e.g.
    ``{"tent-lr0.01": {"adapter": "tent", "optimizer": {"name": "adam", "lr": 0.01}}}``.
    ``source_signals`` records the signals against the frozen source (``source_agreement``,
    ``atc_gap``, ...) in every adapted run, not only where the guard reads them (one extra forward;
    the source reference run would only compare the source with itself)."""
    guard = guard or GUARD
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if unknown := sorted(set(streams) - set(STREAMS)):
        raise ValueError(f"unknown streams {unknown}; known: {', '.join(STREAMS)}")
    chosen = {label: adapter_of(label, (adapter_configs or {}).get(label, {})) for label in adapters}
    guards: dict[str, dict[str, Any] | None] = {
        "no guard": None,
        "guard": guard,
        "periodic reset": {"reset_every_steps": reset_every_steps},
    }
    stream_settings = {
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
        "source_signals": source_signals,
        "split": (built_with(data) or {}).get("split") or "test",  # which clean images were corrupted
        "streams": {},
    }
    for stream in (s for s in STREAMS if s in streams):
        settings = stream_settings[stream]
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
                source_signals=source_signals and variant != "source",
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
        from benchmarks.reporting.long_streams_report import write_long_stream_report

        write_long_stream_report(report, out_dir)
    return report
