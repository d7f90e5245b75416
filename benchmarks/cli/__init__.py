"""tta-bench: offline tools of tta-server.

Source model: train-source, prepare. Data: make-cifar10c, make-imagenet-c. Evaluation: replay,
report, signals, long-streams, sweep, equal-error. Performance: adapter-speed, frozen-forward,
working-memory, load-test, scale, restore-start. "tta-bench COMMAND --help" explains each option and its
default; benchmark outputs go to runs/COMMAND/ unless --out says otherwise.
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from adapters import AdapterError
from benchmarks.cli import data, evaluation, performance, replay, source_model
from benchmarks.data.cifar10 import DatasetError
from benchmarks.evaluation.remote import ServerError

# failures of what the user gave (paths, data sets, configs, a server), not of tta-bench itself
USER_ERRORS = (DatasetError, AdapterError, ServerError, ValidationError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tta-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (source_model, data, replay, evaluation, performance):
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train-source":  # the training script has its own parser
        from benchmarks.source_model.train import main as train_main

        train_main(rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        args.run(args)
    except USER_ERRORS as exc:  # a wrong path, data set, config or server: one line, not a traceback
        raise SystemExit(f"tta-bench {args.command}: {exc}") from exc


if __name__ == "__main__":
    main()
