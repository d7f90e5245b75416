"""The studies built on replays: ``signals``, ``signal-precision``, ``long-streams``, ``sweep``, ``equal-error``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmarks.cli.common import add_cifar10c_data, add_command, add_model, add_out, wrote


def register(commands: Any) -> None:
    signals = add_command(
        commands,
        "signals",
        "Spearman correlation of every label-free signal with the true per-domain error, per adapter",
    )
    add_cifar10c_data(signals)
    signals.add_argument("--adapters", default="source,norm,tent,ecotta,vida,rmt", help="comma-separated")
    signals.add_argument("--n-per-domain", type=int, default=2000, help="images per domain")
    signals.add_argument("--batch-size", type=int, default=200, help="images per step")
    signals.add_argument(
        "--dropout-estimate",
        action="store_true",
        help="also the AETTA-style dropout-disagreement accuracy estimate (10 classifier passes per step)",
    )
    add_model(signals)
    add_out(signals, "signals")
    signals.set_defaults(run=run_signals)

    precision = add_command(
        commands,
        "signal-precision",
        "the source forward behind the signals in fp32 or bf16: step time, signals and guard decisions side by side",
    )
    add_cifar10c_data(precision)
    precision.add_argument("--adapters", default="tent,norm,ecotta", help="comma-separated")
    precision.add_argument("--streams", default="continual,dirichlet", help="comma-separated")
    precision.add_argument("--n-per-domain", type=int, default=1000, help="images per domain")
    precision.add_argument("--batch-size", type=int, default=64, help="images per step")
    add_model(precision)
    add_out(precision, "signal-precision")
    precision.set_defaults(run=run_signal_precision)

    long = add_command(
        commands,
        "long-streams",
        "recurring and Dirichlet CIFAR-10-C streams without guard, with the guard and with periodic reset",
    )
    add_cifar10c_data(long)
    long.add_argument("--adapters", default="tent,ecotta,norm", help="comma-separated")
    long.add_argument("--visits", type=int, default=20, help="visits of the 15 domains")
    long.add_argument("--n-per-visit", type=int, default=1000, help="images per domain and visit")
    long.add_argument("--delta", type=float, default=0.1, help="Dirichlet delta")
    long.add_argument("--reset-every-steps", type=int, default=1000, help="periodic reset")
    long.add_argument("--window-steps", type=int, default=5, help="signal window")
    long.add_argument("--guard", type=json.loads, default=None, help="guard JSON (None: long_streams.GUARD)")
    long.add_argument(
        "--adapter-config",
        type=json.loads,
        default=None,
        help='label -> config for entries of --adapters, e.g. \'{"tent-lr0.01": {"adapter": "tent", "optimizer": '
        '{"name": "adam", "lr": 0.01}}}\'',
    )
    long.add_argument(
        "--variants",
        default="no guard,guard,periodic reset",
        help="comma-separated; finished runs are saved under OUT/runs/ and reused by a later call",
    )
    long.add_argument("--streams", default="recurring,dirichlet", help="comma-separated")
    long.add_argument(
        "--source-signals",
        action="store_true",
        help="record the signals against the frozen source in every adapted run (one extra forward per batch)",
    )
    add_model(long)
    add_out(long, "long-streams")
    long.set_defaults(run=run_long_streams)

    sweep = add_command(commands, "sweep", "replays over adapter x setting x seed, sequentially or on a Ray cluster")
    add_cifar10c_data(sweep)
    sweep.add_argument("--adapters", default="norm,tent", help="comma-separated")
    sweep.add_argument("--settings", default="continual", help="comma-separated")
    sweep.add_argument("--seeds", default="0", help="comma-separated")
    sweep.add_argument("--n-per-domain", type=int, default=None, help="images per domain (None: all)")
    sweep.add_argument("--batch-size", type=int, default=200, help="images per step")
    sweep.add_argument("--threads", type=int, default=1, help="torch threads per point")
    sweep.add_argument("--ray-address", default=None, help="Ray cluster (auto, ray://host:10001), 'local', or None")
    add_model(sweep)
    add_out(sweep, "sweep")
    sweep.set_defaults(run=run_sweep)

    equal = add_command(
        commands, "equal-error", "continual CIFAR-10-C error of each adapter's default path vs its exact fp32 baseline"
    )
    add_cifar10c_data(equal)
    equal.add_argument("--adapters", default="source,norm,tent,ecotta,vida,rmt,cotta,petal", help="comma-separated")
    equal.add_argument("--n-per-domain", type=int, default=2000, help="images per domain")
    equal.add_argument(
        "--n-per-domain-for",
        action="append",
        default=[],
        metavar="NAME=N",
        help="a smaller count for a slow adapter, e.g. cotta=500 (repeatable)",
    )
    equal.add_argument("--batch-size", type=int, default=200, help="images per step")
    add_model(equal)
    add_out(equal, "equal-error")
    equal.set_defaults(run=run_equal_error)


def run_signals(args: argparse.Namespace) -> None:
    from adapters import create_source_model
    from benchmarks.evaluation.signals_vs_truth import run_signals_vs_truth, signals_table

    adapters = args.adapters.split(",")
    source = create_source_model(args.model)
    n, batch, dropout = args.n_per_domain, args.batch_size, args.dropout_estimate
    report = run_signals_vs_truth(source, args.data, adapters, n, batch, args.out, dropout_estimate=dropout)
    print(signals_table(report))
    wrote(args.out, "signals_vs_truth.json", "signals_vs_truth.md", "signals_vs_truth.png")


def run_signal_precision(args: argparse.Namespace) -> None:
    from adapters import create_source_model, list_adapters
    from benchmarks.evaluation.signal_precision import STREAMS, run_signal_precision, signal_precision_table

    streams, adapters = args.streams.split(","), args.adapters.split(",")
    if unknown := sorted(set(streams) - set(STREAMS)):
        raise SystemExit(f"--streams: unknown {', '.join(unknown)}; known: {', '.join(STREAMS)}")
    if unknown := sorted(set(adapters) - set(list_adapters())):
        raise SystemExit(f"--adapters: unknown {', '.join(unknown)}; known: {', '.join(list_adapters())}")
    source = create_source_model(args.model)
    report = run_signal_precision(source, args.data, adapters, streams, args.n_per_domain, args.batch_size)
    print(signal_precision_table(report, args.out))
    wrote(args.out, "signal_precision.json", "signal_precision.md")


def run_long_streams(args: argparse.Namespace) -> None:
    from adapters import create_source_model
    from benchmarks.evaluation.long_streams import STREAMS, VARIANTS, adapter_of
    from benchmarks.evaluation.long_streams import run_long_streams as run

    variants, streams = args.variants.split(","), args.streams.split(",")
    if unknown := sorted(set(variants) - set(VARIANTS)):
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if unknown := sorted(set(streams) - set(STREAMS)):
        raise SystemExit(f"--streams: unknown {', '.join(unknown)}; known: {', '.join(STREAMS)}")
    for label in args.adapters.split(","):  # before hours of replay, not after
        try:
            adapter_of(label, (args.adapter_config or {}).get(label, {}))
        except ValueError as exc:
            raise SystemExit(f"--adapters: {exc}") from exc
    run(
        create_source_model(args.model),
        args.data,
        args.adapters.split(","),
        args.visits,
        args.n_per_visit,
        args.delta,
        args.reset_every_steps,
        args.window_steps,
        args.guard,
        args.out,
        variants=variants,
        adapter_configs=args.adapter_config,
        streams=streams,
        source_signals=args.source_signals,
    )
    print((args.out / "long_streams.md").read_text())
    wrote(args.out, "long_streams.json", "long_streams.md", "long_streams_*.png")


def run_sweep(args: argparse.Namespace) -> None:
    from benchmarks.evaluation.sweep import run_sweep as run
    from benchmarks.evaluation.sweep import sweep_points, sweep_table

    points = sweep_points(args.adapters.split(","), args.settings.split(","), [int(s) for s in args.seeds.split(",")])
    base = {"n_per_domain": args.n_per_domain, "batch_size": args.batch_size}
    result = run(args.model, args.data, points, base, args.ray_address, args.threads, args.out)
    print(sweep_table(result))
    wrote(args.out, "sweep.json", "sweep.md")


def run_equal_error(args: argparse.Namespace) -> None:
    from adapters import create_source_model
    from benchmarks.evaluation.equal_error import run_equal_error as run

    names = args.adapters.split(",")
    per_domain = {name: args.n_per_domain for name in names}
    for item in args.n_per_domain_for:
        name, _, count = item.partition("=")
        if name not in per_domain:
            raise SystemExit(f"--n-per-domain-for {item}: {name!r} is not in --adapters")
        per_domain[name] = int(count)
    print(run(create_source_model(args.model), args.data, names, per_domain, args.batch_size, args.out))
    wrote(args.out, "equal_error.json", "equal_error.md")
