"""Pieces every ``tta-bench`` command shares: parsers with defaults in their help, output folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RUNS = Path("runs")  # benchmark outputs; benchmarks/results/ changes only with an explicit --out


def add_command(commands: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name, help=help, description=description or help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    return parser


def add_out(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=RUNS / command,
        help="output directory (pass benchmarks/results to update the committed results)",
    )


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="cifar10-airbench", help="source model (tta-server's model names)")


def add_cifar10c_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="CIFAR-10-C directory (tta-bench make-cifar10c)")


def json_arg(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def shared_cifar10(data: Path | None) -> Path:
    from benchmarks.data.cifar10 import find_shared_cifar10

    found = data or find_shared_cifar10()
    if found is None:
        sys.exit("no --data given and ../shared/data/cifar10-jpeg.tar.gz not found")
    return found


def wrote(out: Path, *names: str) -> None:
    """Tell the user where the outputs went."""
    print(f"wrote {', '.join(str(out / name) for name in names)}")
