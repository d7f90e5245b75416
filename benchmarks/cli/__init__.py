"""tta-bench: offline tools of tta-server.

Source model: train-source, prepare. Data: make-cifar10c, make-imagenet-c. Evaluation: replay,
report, signals, long-streams, sweep, equal-error. Performance: adapter-speed, frozen-forward,
working-memory, load-test, scale. "tta-bench COMMAND --help" explains each option and its
default; benchmark outputs go to runs/COMMAND/ unless --out says otherwise.
"""

from __future__ import annotations

import argparse

from benchmarks.cli import data, evaluation, performance, replay, source_model


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
    args.run(args)


if __name__ == "__main__":
    main()
