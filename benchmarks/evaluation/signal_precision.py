"""Signals from an fp32 or a bf16 source forward: cost and what changes (``tta-bench signal-precision``).

With source signals on (the server's default), every step runs the frozen source model once more,
through the BatchNorm probe: it gives the source prediction the signals compare with and the
BatchNorm-statistics shift. ``signal_precision`` picks that forward's precision. Per adapter and
stream, three copies of one stream step through the same batches in lockstep (so their step times
are measured side by side): without source signals, with them in fp32 and in bf16, both with the
guard of the long-stream study. Reported: the median step time of each copy, the answered error,
how often the two probes' source predictions differ, each signal's largest per-domain difference
and Spearman correlation with the error in both, and whether the guard took the same decisions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from adapters import SourceModel
from benchmarks.evaluation.local import LocalStream
from benchmarks.evaluation.long_streams import GUARD
from benchmarks.evaluation.replay import ReplayConfig, domain_loader
from benchmarks.evaluation.signals_vs_truth import spearman_with
from benchmarks.evaluation.stream_settings import Segment, build_stream
from benchmarks.reporting.results import write_result

VARIANTS = ("no signals", "fp32", "bf16")
STREAMS: dict[str, dict[str, Any]] = {"continual": {}, "dirichlet": {"setting": "correlated", "delta": 0.1}}


def _configs(adapter: str, stream: str, n_per_domain: int, batch_size: int) -> dict[str, ReplayConfig]:
    base = {"adapter": adapter, "n_per_domain": n_per_domain, "batch_size": batch_size, **STREAMS[stream]}
    return {
        "no signals": ReplayConfig(**base),
        "fp32": ReplayConfig(**base, source_signals=True, guard=GUARD, signal_precision="fp32"),
        "bf16": ReplayConfig(**base, source_signals=True, guard=GUARD, signal_precision="bf16"),
    }


def lockstep(
    source: SourceModel, segments: Sequence[Segment], configs: dict[str, ReplayConfig], progress: bool = True
) -> dict[str, Any]:
    """Step one stream per config through ``segments`` batch by batch; per config the step times,
    answers, source predictions, signals and guard decisions."""
    torch.manual_seed(0)
    streams = {name: LocalStream(source, config) for name, config in configs.items()}
    runs: dict[str, dict[str, Any]] = {
        name: {"seconds": [], "predicted": [], "source": [], "signals": [], "decisions": []} for name in streams
    }
    labels, tags, batch_tags = [], [], []
    batch_size = next(iter(configs.values())).batch_size
    bar = tqdm(total=sum(len(s.labels) for s in segments), desc="lockstep", unit="img", disable=not progress)
    for segment in segments:
        for first in range(0, len(segment.labels), batch_size):
            images = segment.images[first : first + batch_size]
            for name, stream in streams.items():
                start = time.perf_counter()
                predicted = stream.step(images)
                run = runs[name]
                run["seconds"].append(time.perf_counter() - start)
                run["predicted"].append(predicted)
                classes = stream.online.last_source_classes
                run["source"].append(None if classes is None else classes.numpy())
                run["signals"].append(stream.online.signals.report()["last_step"] if stream.signals_on else {})
                if stream.last_action is not None:
                    action = stream.last_action
                    run["decisions"].append((len(run["seconds"]) - 1, action["reason"], action["action"]))
            labels.append(segment.labels[first : first + batch_size])
            tags.append(segment.tags[first : first + batch_size])
            batch_tags.append(str(tags[-1][0]))
            bar.update(len(images))
    bar.close()
    return {
        "runs": runs,
        "labels": np.concatenate(labels),
        "tags": np.concatenate(tags),
        "batch_tags": np.array(batch_tags),
    }


def _per_domain(values: np.ndarray, tags: np.ndarray) -> dict[str, float]:
    return {str(tag): float(values[tags == tag].mean()) for tag in dict.fromkeys(tags.tolist())}


def summarise(traces: dict[str, Any]) -> dict[str, Any]:
    """The figures of one adapter and stream from :func:`lockstep`'s traces."""
    runs, labels, tags, batch_tags = traces["runs"], traces["labels"], traces["tags"], traces["batch_tags"]
    out: dict[str, Any] = {"variants": {}}
    for name, run in runs.items():
        errors = _per_domain((np.concatenate(run["predicted"]) != labels).astype(float), tags)
        out["variants"][name] = {
            "median_step_ms": 1000 * float(np.median(run["seconds"])),
            "mean_error": float(np.mean(list(errors.values()))),
            "per_domain_error": errors,
            "decisions": [list(d) for d in run["decisions"]],
        }
    exact, fast = runs["fp32"], runs["bf16"]
    error = out["variants"]["fp32"]["per_domain_error"]
    signals: dict[str, Any] = {}
    names = dict.fromkeys(name for step in exact["signals"] for name in step)
    for name in names:
        steps = {}  # variant -> domain -> the signal's values on the domain's steps
        for variant, run in (("fp32", exact), ("bf16", fast)):
            values = np.array([step.get(name, np.nan) for step in run["signals"]], dtype=float)
            steps[variant] = {d: values[(batch_tags == d) & ~np.isnan(values)] for d in error}
        # domains where both report the signal (e.g. no parameter distance while the guard falls back)
        domains = [d for d in error if len(steps["fp32"][d]) and len(steps["bf16"][d])]
        if not domains:
            continue
        per = {v: [float(by_domain[d].mean()) for d in domains] for v, by_domain in steps.items()}
        complete, truth = len(domains) == len(error), list(error.values())
        rho = {v: spearman_with(truth, {name: m}).get(name) if complete else None for v, m in per.items()}
        signals[name] = {
            "domains": len(domains),
            "max_domain_difference": float(np.max(np.abs(np.subtract(per["bf16"], per["fp32"])))),
            "mean_fp32": float(np.mean(per["fp32"])),
            "spearman_fp32": rho["fp32"],
            "spearman_bf16": rho["bf16"],
        }
    out["signals"] = signals
    out["source_prediction_disagreement"] = float(
        np.mean(np.concatenate(exact["source"]) != np.concatenate(fast["source"]))
    )
    out["answer_disagreement"] = float(np.mean(np.concatenate(exact["predicted"]) != np.concatenate(fast["predicted"])))
    out["same_decisions"] = exact["decisions"] == fast["decisions"]
    return out


def run_signal_precision(
    source: SourceModel,
    data: Path,
    adapters: Sequence[str],
    streams: Sequence[str] = tuple(STREAMS),
    n_per_domain: int = 1000,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    unknown = sorted(set(streams) - set(STREAMS))
    if unknown:
        raise ValueError(f"unknown streams {unknown}; known: {sorted(STREAMS)}")
    results = []
    for stream in streams:
        for adapter in adapters:
            configs = _configs(adapter, stream, n_per_domain, batch_size)
            config = configs["fp32"]
            segments = build_stream(
                domain_loader(config, data), config.corruptions, config.setting, config.severity,
                config.n_per_domain, config.seed, config.delta, config.visits,
            )  # fmt: skip
            traces = lockstep(source, segments, configs, progress)
            results.append({"adapter": adapter, "stream": stream, **summarise(traces)})
    return {
        "model": source.model_id,
        "n_per_domain": n_per_domain,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "guard": GUARD,
        "results": results,
    }


def signal_precision_table(report: dict[str, Any], out: Path) -> str:
    """Write ``signal_precision.json`` and ``.md`` to ``out``; returns the Markdown."""
    rows = []
    for r in report["results"]:
        v = r["variants"]
        ms = {name: v[name]["median_step_ms"] for name in VARIANTS}
        rows.append([
            r["adapter"], r["stream"], *(f"{ms[name]:.0f}" for name in VARIANTS),
            f"{ms['fp32'] / ms['bf16']:.2f}",
            f"{100 * v['fp32']['mean_error']:.2f}", f"{100 * v['bf16']['mean_error']:.2f}",
            f"{100 * r['source_prediction_disagreement']:.2f}", f"{100 * r['answer_disagreement']:.2f}",
            f"{len(v['fp32']['decisions'])} / {len(v['bf16']['decisions'])}", "yes" if r["same_decisions"] else "no",
        ])  # fmt: skip
    columns = [
        "adapter", "stream", "step ms, no signals", "fp32 signals", "bf16 signals", "fp32/bf16",
        "error % fp32", "error % bf16", "source predictions differ %", "answers differ %", "guard actions",
        "same decisions",
    ]  # fmt: skip
    names = list(dict.fromkeys(name for r in report["results"] for name in r["signals"]))
    signal_rows = []
    for name in names:
        per_run = [r["signals"][name] for r in report["results"] if name in r["signals"]]
        rho = [abs(s["spearman_bf16"] - s["spearman_fp32"]) for s in per_run if s["spearman_fp32"] is not None]
        worst = max(s["max_domain_difference"] for s in per_run)
        typical = float(np.mean([abs(s["mean_fp32"]) for s in per_run]))
        signal_rows.append(f"| {name} | {worst:.4f} | {typical:.3f} | {f'{max(rho):.3f}' if rho else '-'} |")
    note = (
        f"Model `{report['model']}`, {report['n_per_domain']} images per domain and batch {report['batch_size']} "
        f"on {report['threads']} threads; continual CIFAR-10-C severity 5 and its Dirichlet-ordered stream "
        "(delta 0.1). Three copies of each stream step through the same batches in lockstep: without source "
        "signals, and with them from an fp32 or a bf16 source forward (both with the long-stream study's guard, "
        "whose decisions are compared). Step times are medians over the run's steps. Where the guard "
        "falls back (the Dirichlet stream), its copies only predict from then on, so their steps are shorter "
        "than those of the unguarded copy without signals."
    )
    table = write_result(
        out, "signal_precision", report, "Signals from an fp32 or a bf16 source forward", note, columns, rows
    )
    extra = [
        "",
        "Per signal, over all runs: the largest difference of a per-domain mean between bf16 and fp32, the "
        "signal's typical magnitude, and the largest change of its Spearman correlation with the error.",
        "",
        "| signal | largest per-domain difference | typical value | largest Spearman change |",
        "|---|---:|---:|---:|",
        *signal_rows,
    ]
    text = table + "\n".join(extra) + "\n"
    (out / "signal_precision.md").write_text(text)
    return text
