"""``tta-bench``: train the source model, prepare its artefacts, measure frozen forwards."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.stream_settings import SETTINGS


def _model_kwargs(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _corruption_names(text: str) -> tuple[str, ...]:
    from benchmarks.corruptions.constants import ALL_CORRUPTIONS, COMMON_CORRUPTIONS

    named = {"common": COMMON_CORRUPTIONS, "all": ALL_CORRUPTIONS}
    return named.get(text) or tuple(text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tta-bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("train-source", help="train the bundled CIFAR-10 model", add_help=False)

    prep = commands.add_parser("prepare", help="build missing source artefacts for a model")
    prep.add_argument("--model", default="cifar10-airbench")
    prep.add_argument("--model-kwargs", help="JSON arguments of the model factory")
    prep.add_argument("--data", type=Path, help="CIFAR-10 directory or tarball (default: ../shared/data)")
    prep.add_argument("--artefacts", help="comma-separated names (default: all registered)")
    prep.add_argument("--force", action="store_true", help="rebuild even if present")
    prep.add_argument("--device", default="cpu", help="torch device for the builders, e.g. cuda")

    frozen = commands.add_parser("frozen-forward", help="images/s of torch eager vs ONNX Runtime")
    frozen.add_argument("--model", default="cifar10-airbench")
    frozen.add_argument("--batch-sizes", default="1,64,200")
    frozen.add_argument("--repeats", type=int, default=15)
    frozen.add_argument("--out", type=Path, default=Path("benchmarks/results"))

    speed = commands.add_parser("adapter-speed", help="images/s of forward_and_adapt per adapter")
    speed.add_argument("--model", default="cifar10-airbench")
    speed.add_argument("--adapters", default="source:torch,source:onnxruntime,norm,tent")
    speed.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra row with a config, e.g. ecotta='{\"backprop_frozen\": true}' (repeatable)",
    )
    speed.add_argument("--batch-size", type=int, default=200)
    speed.add_argument("--repeats", type=int, default=15)
    speed.add_argument("--out", type=Path, default=Path("benchmarks/results"))

    working = commands.add_parser(
        "working-memory", help="the server's working-memory estimate vs profiled steps per adapter"
    )
    working.add_argument("--model", default="cifar10-airbench")
    working.add_argument("--adapters", default="norm,tent,cotta,rmt,petal,ecotta,vida")
    working.add_argument("--batch-sizes", default="64,200")
    working.add_argument("--out", type=Path, default=Path("benchmarks/results"))

    make_c = commands.add_parser(
        "make-cifar10c",
        help="build CIFAR-10-C (official layout) from a CIFAR-10 test set",
        description="Corrupt every test image with each corruption at severities 1-5 and write "
        "<corruption>.npy, labels.npy, order.npy and manifest.json (resumable; bit-identical for a seed).",
    )
    make_c.add_argument(
        "--data", type=Path, help="CIFAR-10 folder, tarball or python batches (default: ../shared/data)"
    )
    make_c.add_argument("--out", type=Path, required=True, help="output directory")
    make_c.add_argument("--corruptions", default="common", help="'common' (15), 'all' (19) or comma-separated names")
    make_c.add_argument("--constants", choices=("cifar", "imagenet"), default="cifar", help="constant set")
    make_c.add_argument("--seed", type=int, default=0, help="row permutation and corruption randomness")
    make_c.add_argument("--no-shuffle", action="store_true", help="keep the source order (e.g. the python batches)")
    make_c.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    make_in = commands.add_parser(
        "make-imagenet-c",
        help="build ImageNet-C (official layout) from an ImageNet-style validation folder",
        description="Resize(256) + CenterCrop(224) every <wnid>/*.JPEG image, corrupt it with the ImageNet-C "
        "constants and save it as JPEG quality 85 under <out>/<corruption>/<severity>/<wnid>/ (resumable).",
    )
    make_in.add_argument("--data", type=Path, required=True, help="folder of <wnid>/ class folders")
    make_in.add_argument("--out", type=Path, required=True, help="output directory (the ImageNet-C root)")
    make_in.add_argument("--corruptions", default="common", help="'common' (15), 'all' (19) or comma-separated names")
    make_in.add_argument("--severities", default="1,2,3,4,5")
    make_in.add_argument("--seed", type=int, default=0)
    make_in.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    load = commands.add_parser("load-test", help="concurrent streams through the server vs in process")
    load.add_argument("--adapters", default="source,norm,tent")
    load.add_argument("--streams", type=int, default=8)
    load.add_argument("--batches", type=int, default=10, help="requests per stream")
    load.add_argument("--batch-size", type=int, default=64)
    load.add_argument("--workers", type=int, default=2, help="server model worker threads")
    load.add_argument("--out", type=Path, default=Path("benchmarks/results"))

    rep = commands.add_parser(
        "replay",
        help="replay CIFAR-10-C or ImageNet-C through adapters (online error, tables, plots)",
        description="Each batch is predicted once, before that batch's update; one JSON per adapter, table.md "
        "and plots go to --out. Example: tta-bench replay --data DIR --adapters source,norm,tent --n-per-domain 2000",
    )
    rep.add_argument("--data", type=Path, required=True, help="CIFAR-10-C directory or ImageNet-C root")
    rep.add_argument("--dataset", choices=("cifar10c", "imagenet-c"), default="cifar10c")
    rep.add_argument("--preprocessing", choices=("as-is", "resize-crop"), default="as-is", help="ImageNet-C only")
    rep.add_argument("--subset-file", type=Path, help="ImageNet-C: wnid/file lines (e.g. RobustBench's 5,000 ids)")
    rep.add_argument("--corruptions", help="comma-separated domain order (default: the standard 15)")
    rep.add_argument("--orders", choices=("standard", "cotta10"), default="standard", help="cotta10: CoTTA's 10 orders")
    rep.add_argument("--model", default="cifar10-airbench")
    rep.add_argument("--model-kwargs", help="JSON arguments of the model factory (e.g. a weights path)")
    rep.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    rep.add_argument(
        "--server",
        help="URL of a running tta-server (e.g. http://127.0.0.1:8000): send the stream to POST /v1/predict "
        "(one stream id per run) instead of adapting in process; its --adapter must match --adapters",
    )
    rep.add_argument("--adapters", default="source,norm,tent", help="comma-separated adapter names")
    rep.add_argument(
        "--adapter-config", default="{}", help='JSON per adapter, e.g. \'{"tent": {"optimizer": {"lr": 5e-4}}}\''
    )
    rep.add_argument("--setting", choices=SETTINGS, default="continual")
    rep.add_argument("--delta", type=float, default=None, help="correlated: Dirichlet delta (default: sort by label)")
    rep.add_argument("--severity", type=int, default=5)
    rep.add_argument("--n-per-domain", type=int, default=None, help="default: all (CIFAR-10-C), 5000 (ImageNet-C)")
    rep.add_argument("--batch-size", type=int, default=200)
    rep.add_argument(
        "--min-adapt-batch",
        type=int,
        default=1,
        help="the server's small-request policy: smaller batches are predicted with context and buffered "
        "(default: 1, every batch adapts; match the server's setting to compare with --server)",
    )
    rep.add_argument(
        "--guard",
        type=json.loads,
        default=None,
        help='the collapse guard, as the server\'s guard setting (JSON), e.g. {"policy": "reset", "thresholds": '
        '[{"signal": "majority_share", "above": 0.6}]}; decisions go into the result JSON (default: none)',
    )
    rep.add_argument("--visits", type=int, default=1, help="recurring setting: visits of the domain sequence")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--out", type=Path, default=Path("runs/replay"))

    rep_report = commands.add_parser("report", help="re-render the table and plots of replay results")
    rep_report.add_argument("results", type=Path, nargs="+", help="replay JSON files (one per adapter)")
    rep_report.add_argument("--out", type=Path, default=None, help="default: the first file's directory")
    rep_report.add_argument("--stem", default="", help="write <stem>.md, <stem>.json and <stem>_*.png")
    rep_report.add_argument("--note", default="", help="a paragraph for <stem>.md (how the runs were made)")

    signals = commands.add_parser(
        "signals",
        help="Spearman correlation of every label-free signal with the true per-domain error, per adapter",
        description="Replays continual CIFAR-10-C with the signals on for each adapter (and the source) and writes "
        "signals_vs_truth.{json,md,png} to --out.",
    )
    signals.add_argument("--data", type=Path, required=True, help="CIFAR-10-C directory (tta-bench make-cifar10c)")
    signals.add_argument("--adapters", default="source,norm,tent,ecotta,vida,rmt", help="(default: %(default)s)")
    signals.add_argument("--n-per-domain", type=int, default=2000, help="(default: %(default)s)")
    signals.add_argument("--batch-size", type=int, default=200, help="(default: %(default)s)")
    signals.add_argument("--out", type=Path, default=Path("runs/signals"), help="(default: %(default)s)")
    signals.add_argument("--model", default="cifar10-airbench", help="(default: %(default)s)")

    long = commands.add_parser(
        "long-streams",
        help="recurring and Dirichlet CIFAR-10-C streams without guard, with the guard and with periodic reset",
        description="Writes long_streams.{json,md} and long_streams_{recurring,dirichlet}.png to --out.",
    )
    long.add_argument("--data", type=Path, required=True, help="CIFAR-10-C directory (tta-bench make-cifar10c)")
    long.add_argument("--adapters", default="tent,ecotta,norm", help="(default: %(default)s)")
    long.add_argument("--visits", type=int, default=20, help="visits of the 15 domains (default: %(default)s)")
    long.add_argument(
        "--n-per-visit", type=int, default=1000, help="images per domain and visit (default: %(default)s)"
    )
    long.add_argument("--delta", type=float, default=0.1, help="Dirichlet delta (default: %(default)s)")
    long.add_argument("--reset-every-steps", type=int, default=1000, help="periodic reset (default: %(default)s)")
    long.add_argument("--window-steps", type=int, default=5, help="signal window (default: %(default)s)")
    long.add_argument("--guard", type=json.loads, default=None, help="guard JSON (default: long_streams.GUARD)")
    long.add_argument("--out", type=Path, default=Path("runs/long-streams"), help="(default: %(default)s)")
    long.add_argument("--model", default="cifar10-airbench", help="(default: %(default)s)")

    sweep = commands.add_parser(
        "sweep",
        help="replays over adapter x setting x seed, sequentially or on a Ray cluster",
        description="Writes sweep.json (results, and timings apart) and sweep.md to --out.",
    )
    sweep.add_argument("--data", type=Path, required=True, help="CIFAR-10-C directory (tta-bench make-cifar10c)")
    sweep.add_argument("--adapters", default="norm,tent", help="(default: %(default)s)")
    sweep.add_argument("--settings", default="continual", help="comma-separated (default: %(default)s)")
    sweep.add_argument("--seeds", default="0", help="comma-separated (default: %(default)s)")
    sweep.add_argument("--n-per-domain", type=int, default=None, help="(default: all)")
    sweep.add_argument("--batch-size", type=int, default=200, help="(default: %(default)s)")
    sweep.add_argument("--threads", type=int, default=1, help="torch threads per point (default: %(default)s)")
    sweep.add_argument(
        "--ray-address", default=None, help="Ray cluster (auto, ray://host:10001) or 'local' (default: sequential)"
    )
    sweep.add_argument("--model", default="cifar10-airbench", help="(default: %(default)s)")
    sweep.add_argument("--out", type=Path, default=Path("runs/sweep"), help="(default: %(default)s)")

    args, rest = parser.parse_known_args(argv)
    if args.command == "train-source":
        from benchmarks.train_source import main as train_main

        train_main(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    from adapters import create_source_model

    if args.command == "prepare":
        from benchmarks.datasets.cifar10 import find_shared_cifar10
        from benchmarks.prepare import prepare

        data = args.data or find_shared_cifar10()
        if data is None:
            sys.exit("no --data given and ../shared/data/cifar10-jpeg.tar.gz not found")
        source = create_source_model(args.model, **_model_kwargs(args.model_kwargs))
        names = args.artefacts.split(",") if args.artefacts else None
        built = prepare(source, data, names, force=args.force, device=args.device)
        print(json.dumps({"model": source.model_id, "built": built, "directory": str(source.artefact_dir)}))
    elif args.command == "make-imagenet-c":
        from benchmarks.build_corrupted import build_imagenet_c

        manifest = build_imagenet_c(
            args.data,
            args.out,
            _corruption_names(args.corruptions),
            [int(s) for s in args.severities.split(",")],
            seed=args.seed,
            workers=args.workers,
        )
        print(json.dumps(manifest, indent=1))
    elif args.command == "make-cifar10c":
        from benchmarks.build_corrupted import build_cifar10c
        from benchmarks.datasets.cifar10 import find_shared_cifar10, load_cifar10

        data = args.data or find_shared_cifar10()
        if data is None:
            sys.exit("no --data given and ../shared/data/cifar10-jpeg.tar.gz not found")
        manifest = build_cifar10c(
            load_cifar10(data, "test"),
            args.out,
            _corruption_names(args.corruptions),
            seed=args.seed,
            shuffle=not args.no_shuffle,
            constants=args.constants,
            workers=args.workers,
        )
        manifest.pop("done")
        print(json.dumps(manifest, indent=1))
    elif args.command == "load-test":
        from benchmarks.load_test import run_load_test

        print(
            run_load_test(args.adapters.split(","), args.streams, args.batches, args.batch_size, args.workers, args.out)
        )
    elif args.command == "frozen-forward":
        from benchmarks.frozen_forward import run_frozen_forward

        source = create_source_model(args.model)
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        print(run_frozen_forward(source, sizes, args.repeats, args.out))
    elif args.command == "replay":
        from benchmarks.replay import ReplayConfig, replay_dataset, replay_orders, write_report
        from benchmarks.stream_settings import COTTA_TEN_ORDERS

        source = create_source_model(args.model, **_model_kwargs(args.model_kwargs))
        per_adapter = json.loads(args.adapter_config)
        results = []
        args.out.mkdir(parents=True, exist_ok=True)
        for name in args.adapters.split(","):
            config = ReplayConfig(
                adapter=name,
                adapter_config=per_adapter.get(name, {}),
                setting=args.setting,
                severity=args.severity,
                delta=args.delta,
                n_per_domain=args.n_per_domain,
                batch_size=args.batch_size,
                min_adapt_batch=args.min_adapt_batch,
                guard=args.guard,
                visits=args.visits,
                seed=args.seed,
                dataset=args.dataset,
                preprocessing=args.preprocessing,
                subset_file=str(args.subset_file) if args.subset_file else None,
                device=args.device,
                **({"corruptions": tuple(args.corruptions.split(","))} if args.corruptions else {}),
            )
            if args.orders == "cotta10":
                result = replay_orders(source, args.data, config, COTTA_TEN_ORDERS)
            else:
                result = replay_dataset(source, args.data, config, server=args.server)
            (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
            results.append(result)
        print(write_report(results, args.out))
    elif args.command == "report":
        from benchmarks.replay import write_report

        runs = []
        for path in args.results:
            loaded = json.loads(path.read_text())
            runs += loaded.get("runs", [loaded])  # a combined <stem>.json or one run
        print(write_report(runs, args.out or args.results[0].parent, args.stem, args.note))
    elif args.command == "adapter-speed":
        from benchmarks.adapter_speed import run_adapter_speed

        source = create_source_model(args.model)
        chosen = []
        for item in args.adapters.split(","):
            name, _, backend = item.partition(":")
            chosen.append((name, {"backend": backend} if backend else {}))
        for variant in args.variant:
            name, _, config = variant.partition("=")
            chosen.append((name, json.loads(config)))
        print(run_adapter_speed(source, chosen, args.batch_size, args.repeats, args.out))

    elif args.command == "signals":
        from benchmarks.signals_vs_truth import run_signals_vs_truth, signals_table

        report = run_signals_vs_truth(
            create_source_model(args.model),
            args.data,
            args.adapters.split(","),
            args.n_per_domain,
            args.batch_size,
            args.out,
        )
        print(signals_table(report))
        print(f"wrote {args.out}/signals_vs_truth.{{json,md,png}}")
    elif args.command == "long-streams":
        from benchmarks.long_streams import run_long_streams

        run_long_streams(
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
        )
        print((args.out / "long_streams.md").read_text())
        print(f"wrote {args.out}/long_streams.{{json,md}} and long_streams_*.png")
    elif args.command == "sweep":
        from benchmarks.sweep import run_sweep, sweep_points, sweep_table

        points = sweep_points(
            args.adapters.split(","), args.settings.split(","), [int(s) for s in args.seeds.split(",")]
        )
        base = {"n_per_domain": args.n_per_domain, "batch_size": args.batch_size}
        result = run_sweep(args.model, args.data, points, base, args.ray_address, args.threads, args.out)
        print(sweep_table(result))
        print(f"wrote {args.out}/sweep.json and sweep.md")
    elif args.command == "working-memory":
        from benchmarks.working_memory import run_working_memory

        source = create_source_model(args.model)
        sizes = [int(n) for n in args.batch_sizes.split(",")]
        print(run_working_memory(source, args.adapters.split(","), sizes, args.out))


if __name__ == "__main__":
    main()
