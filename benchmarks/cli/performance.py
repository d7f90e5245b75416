"""Measurements: ``adapter-speed``, ``frozen-forward``, ``working-memory``, ``load-test``, ``scale``,
``restore-start``, ``process-memory``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.cli.common import add_command, add_model, add_out, wrote


def register(commands: Any) -> None:
    speed = add_command(
        commands, "adapter-speed", "images/s of forward_and_adapt per adapter: the default path beside an exact one"
    )
    add_model(speed)
    speed.add_argument(
        "--adapters",
        default="source,norm,tent,cotta,rmt,petal,ecotta,vida",
        help="comma-separated adapters; name:backend for the source adapter (e.g. source:onnxruntime)",
    )
    speed.add_argument(
        "--baseline", default=None, metavar="JSON", help='config of the baseline (None: {"precision": "fp32"})'
    )
    speed.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra adapter with a config, e.g. ecotta='{\"backprop_frozen\": true}' (repeatable)",
    )
    speed.add_argument("--batch-size", type=int, default=200, help="images per step")
    speed.add_argument("--repeats", type=int, default=15, help="timed steps per instance")
    add_out(speed, "adapter-speed")
    speed.set_defaults(run=run_adapter_speed)

    frozen = add_command(
        commands,
        "frozen-forward",
        "images/s (and clean accuracy) of the frozen forward: torch fp32/bf16, ONNX Runtime fp32/int8",
    )
    add_model(frozen)
    frozen.add_argument("--batch-sizes", default="1,8,16,32,64,200", help="comma-separated batch sizes")
    frozen.add_argument("--repeats", type=int, default=15, help="timed samples per engine and batch size")
    frozen.add_argument(
        "--data",
        type=Path,
        default=None,
        help="CIFAR-10 folder or tarball: adds the int8 engine (calibrated on the hold-out) and clean accuracy",
    )
    add_out(frozen, "frozen-forward")
    frozen.set_defaults(run=run_frozen_forward)

    working = add_command(
        commands, "working-memory", "the server's working-memory estimate vs profiled steps per adapter"
    )
    add_model(working)
    working.add_argument("--adapters", default="norm,tent,cotta,rmt,petal,ecotta,vida", help="comma-separated")
    working.add_argument("--batch-sizes", default="64,200", help="comma-separated batch sizes to check")
    add_out(working, "working-memory")
    working.set_defaults(run=run_working_memory)

    load = add_command(commands, "load-test", "concurrent streams through a real server vs the same images in process")
    load.add_argument("--adapters", default="source,norm,tent", help="comma-separated")
    load.add_argument("--streams", type=int, default=8, help="concurrent streams")
    load.add_argument("--batches", type=int, default=10, help="requests per stream")
    load.add_argument("--batch-size", type=int, default=64, help="images per request")
    load.add_argument("--workers", type=int, default=2, help="server model worker threads")
    add_out(load, "load-test")
    load.set_defaults(run=run_load_test)

    scale = add_command(
        commands,
        "scale",
        "N streams through a real server under a memory budget that spills: throughput, latency, spill and "
        "wake cost, disk",
    )
    scale.add_argument("--tent", default="10,100,1000", help="stream counts for tent ('' to skip)")
    scale.add_argument("--cotta", default="10,30,100", help="stream counts for cotta ('' to skip)")
    scale.add_argument("--requests", type=int, default=3, help="requests per stream")
    scale.add_argument("--batch-size", type=int, default=16, help="images per request")
    scale.add_argument("--clients", type=int, default=4, help="concurrent connections")
    add_out(scale, "scale")
    scale.set_defaults(run=run_scale)

    restore = add_command(
        commands, "restore-start", "start-up restore over a store of large states: header scan vs full verification"
    )
    add_model(restore)
    restore.add_argument("--adapter", default="cotta", help="whose state fills the store (cotta: ~49 MiB each)")
    restore.add_argument("--streams", type=int, default=40, help="snapshots in the store")
    restore.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    add_out(restore, "restore-start")
    restore.set_defaults(run=run_restore_start)

    process = add_command(
        commands, "process-memory", "a server process' resident memory while streams outgrow its memory budget"
    )
    process.add_argument("--adapter", default="cotta", help="the default adapter of the streams (cotta: ~49 MiB each)")
    process.add_argument("--streams", type=int, default=150, help="new streams, one request each")
    process.add_argument("--budget", type=int, default=2 * 2**30, help="memory_budget_bytes (the Helm chart's)")
    process.add_argument("--batch-size", type=int, default=16, help="images per request")
    process.add_argument("--clients", type=int, default=4, help="concurrent connections")
    add_out(process, "process-memory")
    process.set_defaults(run=run_process_memory)


def run_adapter_speed(args: argparse.Namespace) -> None:
    from adapters import create_source_model
    from benchmarks.performance.adapter_speed import run_adapter_speed as run

    chosen = []
    for item in args.adapters.split(","):
        name, _, backend = item.partition(":")
        chosen.append((name, {"backend": backend} if backend else {}))
    for variant in args.variant:
        name, _, config = variant.partition("=")
        chosen.append((name, json.loads(config)))
    baseline = json.loads(args.baseline) if args.baseline else None
    print(run(create_source_model(args.model), chosen, args.batch_size, args.repeats, args.out, baseline))
    wrote(args.out, "adapter_speed.json", "adapter_speed.md")


def run_frozen_forward(args: argparse.Namespace) -> None:
    from adapters import create_source_model
    from benchmarks.performance.frozen_forward import run_frozen_forward as run

    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print(run(create_source_model(args.model), sizes, args.repeats, args.out, args.data))
    wrote(args.out, "frozen_forward.json", "frozen_forward.md")


def run_working_memory(args: argparse.Namespace) -> None:
    from adapters import create_source_model
    from benchmarks.performance.working_memory import run_working_memory as run

    sizes = [int(n) for n in args.batch_sizes.split(",")]
    print(run(create_source_model(args.model), args.adapters.split(","), sizes, args.out))
    wrote(args.out, "working_memory.json", "working_memory.md")


def run_load_test(args: argparse.Namespace) -> None:
    from benchmarks.performance.load_test import run_load_test as run

    print(run(args.adapters.split(","), args.streams, args.batches, args.batch_size, args.workers, args.out))
    wrote(args.out, "load_test.json", "load_test.md")


def run_scale(args: argparse.Namespace) -> None:
    from benchmarks.performance.scale import run_scale as run

    counts = {name: [int(n) for n in getattr(args, name).split(",") if n] for name in ("tent", "cotta")}
    print(run({k: v for k, v in counts.items() if v}, args.requests, args.batch_size, args.clients, args.out))
    wrote(args.out, "scale.json", "scale.md", "scale.png")


def run_restore_start(args: argparse.Namespace) -> None:
    from adapters import create_source_model
    from benchmarks.performance.restore_start import run_restore_start as run

    print(run(create_source_model(args.model), args.adapter, args.streams, args.repeats, args.out))
    wrote(args.out, "restore_start.json", "restore_start.md")


def run_process_memory(args: argparse.Namespace) -> None:
    from benchmarks.performance.process_memory import run_process_memory as run

    print(run(args.adapter, args.streams, args.budget, args.batch_size, args.clients, args.out))
    wrote(args.out, "process_memory.json", "process_memory.md", "process_memory.png")
