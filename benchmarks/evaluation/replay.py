"""Offline replay of a corruption stream through one adapter, with the online error protocol.

Each batch is predicted once by ``forward_and_adapt`` (the prediction the method's paper
returns, computed before that batch's update), then the adapter updates. The stream's order and
resets come from :mod:`benchmarks.evaluation.stream_settings`; errors are reported per domain tag.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from adapters import SourceModel
from benchmarks.data.cifar10 import ImageArrays
from benchmarks.data.cifar10c import CORRUPTIONS, load_cifar10c
from benchmarks.data.manifest import read_manifest
from benchmarks.evaluation.local import LocalStream
from benchmarks.evaluation.remote import RemoteStream
from benchmarks.evaluation.stream_settings import Loader, Segment, Setting, build_stream


class ReplayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    adapter: str
    adapter_config: dict[str, Any] = Field(default_factory=dict)
    setting: Setting = "continual"
    severity: int = Field(5, ge=1, le=5, description="all settings but the gradual ones")
    delta: float | None = Field(None, gt=0, description="correlated: Dirichlet delta (None: sort by label)")
    visits: int = Field(1, ge=1, description="recurring: how many times the domain sequence is visited")
    corruptions: tuple[str, ...] = CORRUPTIONS
    n_per_domain: int | None = Field(None, ge=1, description="first n images of every domain (default: all)")
    batch_size: int = Field(200, ge=1)
    source_signals: bool = Field(
        False, description="record label-free signals against the frozen source each batch (one extra forward)"
    )
    min_adapt_batch: int = Field(
        1, ge=1, description="as the server's setting: smaller batches are predicted with context and buffered"
    )
    guard: dict[str, Any] | None = Field(
        None,
        description="the collapse guard (adapters.guard_config.GuardConfig); source_signals where it reads them",
    )
    signal_precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="of the source forward behind the signals (the server's signal_precision)"
    )
    window_steps: int = Field(20, ge=1, description="steps per signal window (the server's signal_window_steps)")
    dropout_estimate: bool = Field(False, description="the dropout-disagreement accuracy estimate per step")
    seed: int = 0
    dataset: Literal["cifar10c", "imagenet-c"] = "cifar10c"
    preprocessing: Literal["as-is", "resize-crop"] = Field(
        "as-is", description="ImageNet-C: the released 224-px images as they are, or Resize(256)+CenterCrop(224)"
    )
    subset_file: str | None = Field(None, description="ImageNet-C: wnid/file lines fixing the subset and its order")
    device: str = Field("cpu", description="torch device of the model and batches, e.g. cuda")


def domain_loader(config: ReplayConfig, data: Path) -> Loader:
    """``load(corruption, severity)`` for the configured data set."""
    if config.dataset == "cifar10c":
        return lambda corruption, severity: load_cifar10c(data, corruption, severity)
    from benchmarks.data.imagenet_c import load_imagenet_c

    subset = Path(config.subset_file) if config.subset_file else None

    def load(corruption: str, severity: int) -> ImageArrays:
        return load_imagenet_c(
            data, corruption, severity, config.n_per_domain or 5000, config.preprocessing, config.seed, subset
        )

    return load


def replay_dataset(
    source: SourceModel, data: Path, config: ReplayConfig, progress: bool = True, server: str | None = None
) -> dict[str, Any]:
    """Build the configured stream from ``data`` and replay it (in process, or on ``server``)."""
    segments = build_stream(
        domain_loader(config, data),
        config.corruptions,
        config.setting,
        config.severity,
        config.n_per_domain,
        config.seed,
        config.delta,
        config.visits,
    )
    result = replay(source, segments, config, progress, server)
    if (built := built_with(data)) is not None:
        result["data"] = built
    return result


def built_with(data: Path) -> dict[str, Any] | None:
    """How ``data`` was built (its ``tta-bench make-cifar10c`` / ``make-imagenet-c`` manifest), if known."""
    built = read_manifest(data)
    if built is None:
        return None
    return {k: built.get(k) for k in ("format", "split", "fingerprint", "constants", "seed", "shuffled")}


def replay_orders(
    source: SourceModel, data: Path, config: ReplayConfig, orders: Sequence[Sequence[str]], progress: bool = True
) -> dict[str, Any]:
    """One replay per domain order (e.g. CoTTA's ten ImageNet-C orders), averaged.

    Each order starts from the source model. ``per_domain_error`` is each domain's mean over the
    orders, ``batches`` the concatenated per-batch series of all orders.
    """
    runs = [
        replay_dataset(source, data, config.model_copy(update={"corruptions": tuple(order)}), progress)
        for order in orders
    ]
    domains = list(runs[0]["per_domain_error"])
    aggregate = dict(runs[0])
    seconds = sum(run["seconds"] for run in runs)
    aggregate.update(
        config={**runs[0]["config"], "corruptions": None, "orders": [list(order) for order in orders]},
        per_domain_error={d: float(np.mean([run["per_domain_error"][d] for run in runs])) for d in domains},
        mean_error=float(np.mean([run["mean_error"] for run in runs])),
        error_all_images=float(np.mean([run["error_all_images"] for run in runs])),
        per_order=[{"corruptions": list(o), "mean_error": r["mean_error"]} for o, r in zip(orders, runs, strict=True)],
        batches=[batch for run in runs for batch in run["batches"]],
        images=sum(run["images"] for run in runs),
        seconds=seconds,
        images_per_s=sum(run["images"] for run in runs) / seconds,
        peak_rss_bytes=max(run["peak_rss_bytes"] for run in runs),
    )
    return aggregate


def replay(
    source: SourceModel,
    segments: Sequence[Segment],
    config: ReplayConfig,
    progress: bool = True,
    server: str | None = None,
) -> dict[str, Any]:
    """Run the stream, in process or (with ``server``) through a running tta-server's REST API;
    returns the result record (JSON-ready)."""
    torch.manual_seed(config.seed)
    stream: LocalStream | RemoteStream
    if server is None:
        stream = LocalStream(source, config)
    else:
        adapter_config = {"seed": config.seed, **config.adapter_config}
        stream = RemoteStream(server, config.adapter, adapter_config, guard=config.guard)
    decisions: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = []
    wrong: dict[str, int] = {}
    seen: dict[str, int] = {}
    total = sum(len(s.labels) for s in segments)
    bar = tqdm(total=total, desc=f"replay {config.adapter}", unit="img", disable=not progress)
    start = time.perf_counter()
    for segment in segments:
        if segment.reset_before:  # a fresh stream is at the source already: both kinds skip the reset then
            stream.reset()
        for first in range(0, len(segment.labels), config.batch_size):
            last = min(first + config.batch_size, len(segment.labels))
            predicted = stream.step(segment.images[first:last])
            if stream.last_action is not None:
                decisions.append({"batch": len(batches), **stream.last_action})
            mistakes = predicted != segment.labels[first:last]
            tags = segment.tags[first:last]
            for tag in dict.fromkeys(tags.tolist()):
                mask = tags == tag
                wrong[tag] = wrong.get(tag, 0) + int(mistakes[mask].sum())
                seen[tag] = seen.get(tag, 0) + int(mask.sum())
            record = {"domain": str(tags[0]), "images": last - first, "errors": int(mistakes.sum())}
            signals = stream.last_signals()  # the label-free signals of this batch (in process)
            if signals is not None:
                record["signals"] = signals
            batches.append(record)
            bar.update(last - first)
    elapsed = time.perf_counter() - start
    bar.close()
    per_domain = {tag: wrong[tag] / seen[tag] for tag in seen}
    result: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "model": source.model_id,
        "adapter_config": None,
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
    if config.guard is not None:
        counts: dict[str, int] = {}
        for decision in decisions:
            counts[decision["reason"]] = counts.get(decision["reason"], 0) + 1
        result["guard"] = {"actions": counts, "decisions": decisions}
    stream.finish(result)
    at_five = [error for tag, error in per_domain.items() if tag.endswith("@5")]
    if at_five:
        result["mean_error_at_severity_5"] = float(np.mean(at_five))
    return result
