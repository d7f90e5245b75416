"""``make-cifar10c`` and ``make-imagenet-c``: corrupted test sets in their official layouts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.cli.common import add_command, shared_cifar10


def corruption_names(text: str) -> tuple[str, ...]:
    from benchmarks.data.corruptions.constants import ALL_CORRUPTIONS, COMMON_CORRUPTIONS

    named = {"common": COMMON_CORRUPTIONS, "all": ALL_CORRUPTIONS}
    return named.get(text) or tuple(text.split(","))


def register(commands: Any) -> None:
    make_c = add_command(
        commands,
        "make-cifar10c",
        "build CIFAR-10-C (official layout) from a CIFAR-10 test set (about 5 min on 2 cores)",
        "Corrupt every test image with each corruption at severities 1-5 and write <corruption>.npy, labels.npy, "
        "order.npy and manifest.json (resumable; bit-identical for a seed). With --split holdout, the model's "
        "held-out train images instead: a validation stream of the same layout, for choosing guard limits or "
        "hyper-parameters without looking at the test set.",
    )
    make_c.add_argument("--data", type=Path, default=None, help="CIFAR-10 folder, tarball or python batches")
    make_c.add_argument("--out", type=Path, required=True, help="output directory")
    make_c.add_argument("--corruptions", default="common", help="'common' (15), 'all' (19) or comma-separated names")
    make_c.add_argument("--constants", choices=("cifar", "imagenet"), default="cifar", help="constant set")
    make_c.add_argument("--seed", type=int, default=0, help="row permutation and corruption randomness")
    make_c.add_argument("--no-shuffle", action="store_true", help="keep the source order (e.g. the python batches)")
    make_c.add_argument("--workers", type=int, default=None, help="processes (None: all cores)")
    make_c.add_argument(
        "--split",
        choices=("test", "holdout"),
        default="test",
        help="test: CIFAR-10-C; holdout: the train images --model set aside (never trained on)",
    )
    make_c.add_argument("--model", default="cifar10-airbench", help="whose hold-out --split holdout takes")
    make_c.set_defaults(run=run_make_cifar10c)

    make_in = add_command(
        commands,
        "make-imagenet-c",
        "build ImageNet-C (official layout) from an ImageNet-style validation folder",
        "Resize(256) + CenterCrop(224) every <wnid>/*.JPEG image, corrupt it with the ImageNet-C constants and "
        "save it as JPEG quality 85 under <out>/<corruption>/<severity>/<wnid>/ (resumable).",
    )
    make_in.add_argument("--data", type=Path, required=True, help="folder of <wnid>/ class folders")
    make_in.add_argument("--out", type=Path, required=True, help="output directory (the ImageNet-C root)")
    make_in.add_argument("--corruptions", default="common", help="'common' (15), 'all' (19) or comma-separated names")
    make_in.add_argument("--severities", default="1,2,3,4,5", help="comma-separated severities")
    make_in.add_argument("--seed", type=int, default=0, help="corruption randomness")
    make_in.add_argument("--workers", type=int, default=None, help="processes (None: all cores)")
    make_in.set_defaults(run=run_make_imagenet_c)


def run_make_cifar10c(args: argparse.Namespace) -> None:
    from benchmarks.data.build import build_cifar10c
    from benchmarks.data.cifar10 import load_cifar10

    data = shared_cifar10(args.data)
    if args.split == "holdout":
        from adapters import create_source_model
        from benchmarks.source_model.prepare import holdout_split

        _, images, _ = holdout_split(create_source_model(args.model), load_cifar10(data, "train"))
    else:
        images = load_cifar10(data, "test")
    manifest = build_cifar10c(
        images,
        args.out,
        corruption_names(args.corruptions),
        seed=args.seed,
        shuffle=not args.no_shuffle,
        constants=args.constants,
        workers=args.workers,
        split=args.split,
    )
    manifest.pop("done")
    print(json.dumps({**manifest, "out": str(args.out)}, indent=1))


def run_make_imagenet_c(args: argparse.Namespace) -> None:
    from benchmarks.data.build import build_imagenet_c

    severities = [int(s) for s in args.severities.split(",")]
    manifest = build_imagenet_c(
        args.data, args.out, corruption_names(args.corruptions), severities, seed=args.seed, workers=args.workers
    )
    print(json.dumps({**manifest, "out": str(args.out)}, indent=1))
