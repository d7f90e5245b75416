"""``replay`` and ``report``: a corruption stream through adapters, and re-rendering its results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.cli.common import add_command, add_model, add_out, json_arg, wrote
from benchmarks.evaluation.stream_settings import SETTINGS


def register(commands: Any) -> None:
    rep = add_command(
        commands,
        "replay",
        "replay CIFAR-10-C or ImageNet-C through adapters (online error, tables, plots)",
        "Each batch is predicted once, before that batch's update; one JSON per adapter, table.md and plots go "
        "to --out. Example: tta-bench replay --data DIR --adapters source,norm,tent --n-per-domain 2000",
    )
    rep.add_argument("--data", type=Path, required=True, help="CIFAR-10-C directory or ImageNet-C root")
    rep.add_argument("--dataset", choices=("cifar10c", "imagenet-c"), default="cifar10c", help="data layout")
    rep.add_argument("--preprocessing", choices=("as-is", "resize-crop"), default="as-is", help="ImageNet-C only")
    rep.add_argument("--subset-file", type=Path, default=None, help="ImageNet-C: wnid/file lines fixing the subset")
    rep.add_argument("--corruptions", default=None, help="comma-separated domain order (None: the standard 15)")
    rep.add_argument("--orders", choices=("standard", "cotta10"), default="standard", help="cotta10: CoTTA's 10 orders")
    add_model(rep)
    rep.add_argument("--model-kwargs", default=None, help="JSON arguments of the model factory (e.g. a weights path)")
    rep.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    rep.add_argument(
        "--server",
        default=None,
        help="URL of a running tta-server (e.g. http://127.0.0.1:8000): send the stream to POST /v1/predict "
        "(one stream per run, created with --adapters' adapter and config) instead of adapting in process",
    )
    rep.add_argument("--adapters", default="source,norm,tent", help="comma-separated adapter names")
    rep.add_argument("--adapter-config", default="{}", help='JSON per adapter, e.g. {"tent": {"precision": "fp32"}}')
    rep.add_argument("--setting", choices=SETTINGS, default="continual", help="how the domains form one stream")
    rep.add_argument("--delta", type=float, default=None, help="correlated: Dirichlet delta (None: sort by label)")
    rep.add_argument("--severity", type=int, default=5, help="corruption severity (all settings but gradual ones)")
    rep.add_argument("--n-per-domain", type=int, default=None, help="images per domain (None: all; ImageNet-C 5000)")
    rep.add_argument("--batch-size", type=int, default=200, help="images per step")
    rep.add_argument(
        "--min-adapt-batch",
        type=int,
        default=1,
        help="the server's small-request policy: smaller batches are predicted with context and buffered "
        "(1: every batch adapts; match the server's setting to compare with --server)",
    )
    rep.add_argument(
        "--guard",
        type=json.loads,
        default=None,
        help='the collapse guard, as the server\'s guard setting (JSON), e.g. {"policy": "reset", "thresholds": '
        '[{"signal": "majority_share", "above": 0.6}]}; decisions go into the result JSON',
    )
    rep.add_argument(
        "--signal-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="the server's signal_precision: the source forward behind a guard's signals",
    )
    rep.add_argument("--visits", type=int, default=1, help="recurring setting: visits of the domain sequence")
    rep.add_argument("--seed", type=int, default=0, help="stream order and adapter seed")
    add_out(rep, "replay")
    rep.set_defaults(run=run_replay)

    rep_report = add_command(commands, "report", "re-render the table and plots of replay results")
    rep_report.add_argument("results", type=Path, nargs="+", help="replay JSON files (one per adapter)")
    rep_report.add_argument("--out", type=Path, default=None, help="output directory (None: the first file's)")
    rep_report.add_argument("--stem", default="", help="write <stem>.md, <stem>.json and <stem>_*.png")
    rep_report.add_argument("--note", default="", help="a paragraph for <stem>.md (how the runs were made)")
    rep_report.set_defaults(run=run_report)


def refuse_combinations(args: argparse.Namespace) -> None:
    """Options that would be silently ignored together are refused, saying why."""
    problems = []
    if args.server and args.orders == "cotta10":
        problems.append("--orders cotta10 runs in process only (ten streams from the source); drop --server")
    if args.server and args.device != "cpu":
        problems.append("--device applies in process; a server adapts on its own device setting")
    if args.server and args.min_adapt_batch != 1:
        problems.append("--min-adapt-batch applies in process; a server applies its own min_adapt_batch")
    if args.server and args.signal_precision != "fp32":
        problems.append("--signal-precision applies in process; a server applies its own signal_precision")
    if args.dataset != "imagenet-c" and (args.preprocessing != "as-is" or args.subset_file):
        problems.append("--preprocessing and --subset-file apply to --dataset imagenet-c only")
    if args.delta is not None and args.setting != "correlated":
        problems.append("--delta applies to --setting correlated only")
    if args.visits != 1 and args.setting != "recurring":
        problems.append("--visits applies to --setting recurring only")
    if problems:
        raise SystemExit("tta-bench replay: " + "; ".join(problems))


def run_replay(args: argparse.Namespace) -> None:
    from adapters import create_source_model
    from benchmarks.evaluation.replay import ReplayConfig, replay_dataset, replay_orders
    from benchmarks.evaluation.stream_settings import COTTA_TEN_ORDERS
    from benchmarks.reporting.replay_report import write_report

    refuse_combinations(args)
    source = create_source_model(args.model, **json_arg(args.model_kwargs))
    per_adapter = json.loads(args.adapter_config)
    unknown = set(per_adapter) - set(args.adapters.split(","))
    if unknown:
        raise SystemExit(f"--adapter-config names adapters not in --adapters: {sorted(unknown)}")
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
            signal_precision=args.signal_precision,
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
    wrote(args.out, *(f"{name}.json" for name in args.adapters.split(",")), "table.md", "*.png")


def run_report(args: argparse.Namespace) -> None:
    from benchmarks.reporting.replay_report import write_report

    runs = []
    for path in args.results:
        try:
            loaded = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SystemExit(f"tta-bench report: {path} is not a replay results file ({exc})") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"tta-bench report: {path} is not a replay results file (not a JSON object)")
        runs += loaded.get("runs", [loaded])  # a combined <stem>.json or one run
    out = args.out or args.results[0].parent
    print(write_report(runs, out, args.stem, args.note))
    wrote(out, *((f"{args.stem}.md", f"{args.stem}.json") if args.stem else ("table.md",)), "*.png")
