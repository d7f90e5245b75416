"""``train-source`` and ``prepare``: the bundled model and its source artefacts."""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmarks.cli.common import add_command, add_model, json_arg, shared_cifar10


def register(commands: Any) -> None:
    commands.add_parser(
        "train-source",
        help="train the bundled CIFAR-10 model (tta-bench train-source --help for its options)",
        add_help=False,
    ).set_defaults(run=None)
    prep = add_command(commands, "prepare", "build a model's missing source artefacts from its training data")
    add_model(prep)
    prep.add_argument("--model-kwargs", default=None, help="JSON arguments of the model factory")
    prep.add_argument("--data", default=None, help="CIFAR-10 folder or tarball (None: ../shared/data)")
    prep.add_argument("--artefacts", default=None, help="comma-separated names (None: all registered)")
    prep.add_argument("--force", action="store_true", help="rebuild even if present")
    prep.add_argument("--device", default="cpu", help="torch device for the builders, e.g. cuda")
    prep.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace) -> None:
    from pathlib import Path

    from adapters import create_source_model
    from benchmarks.source_model.prepare import prepare

    data = shared_cifar10(Path(args.data) if args.data else None)
    source = create_source_model(args.model, **json_arg(args.model_kwargs))
    names = args.artefacts.split(",") if args.artefacts else None
    built = prepare(source, data, names, force=args.force, device=args.device)
    print(json.dumps({"model": source.model_id, "built": built, "directory": str(source.artefact_dir)}))
