"""Train the bundled CIFAR-10 source model (airbench94-style recipe, bf16 autocast by default, CPU or GPU).

The recipe follows the published airbench94 hyper-parameters (Jordan, 2024): patch-whitening
stem, identity (dirac) conv init, BatchNorm with frozen scale, Nesterov SGD with decoupled
learning rate and weight decay (BN biases at 64x the learning rate), a triangular schedule,
Lookahead-style weight averaging every 5 steps, alternating flips and 2-px reflect translations,
label smoothing 0.2. Differences: bf16 autocast (``--fp32`` for fp32) instead of fp16, BatchNorm
eps 1e-5 instead of 1e-12 (robust test-batch statistics for small test-time batches), a stratified hold-out split of the
training set for calibration, and more epochs (the CPU budget allows them).

Label smoothing caps the softmax confidence, which would break confidence-gated adapters (the
CoTTA/PETAL augmentation gate). After training, a temperature is fitted by NLL on the hold-out
split and folded into the head, so the shipped logits are calibrated: mean confidence matches
accuracy on held-out source data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from adapters.models.loading import file_sha256
from benchmarks.data.cifar10 import CLASSES, find_shared_cifar10, load_cifar10, stratified_holdout
from benchmarks.source_model.recipe import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    TrainConfig,
    _cutout,
    _init_whitening,
    _normalize,
    _translate,
    build_training_net,
    evaluate_logits,
    fit_temperature,
)


def train_source(config: TrainConfig, data_root: Path, out_dir: Path, device: str = "auto") -> dict[str, Any]:
    """Train, calibrate and write ``<out_dir>/model.safetensors`` and ``metadata.json``."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    train = load_cifar10(data_root, "train")
    test = load_cifar10(data_root, "test")
    train_idx, holdout_idx = stratified_holdout(train.labels, config.holdout_per_class, config.seed)
    x_train = _normalize(train.images[train_idx], dev)
    y_train = torch.from_numpy(train.labels[train_idx]).to(dev)
    x_holdout = _normalize(train.images[holdout_idx], dev)
    y_holdout = torch.from_numpy(train.labels[holdout_idx]).to(dev)
    x_test = _normalize(test.images, dev)
    y_test = torch.from_numpy(test.labels).to(dev)
    padded = F.pad(x_train, (config.translate,) * 4, mode="reflect") if config.translate else x_train
    flip_mask = torch.rand(x_train.shape[0], generator=generator).to(dev) < 0.5

    net = build_training_net(config).to(dev).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    _init_whitening(net.stem[0], x_train[:5000])

    steps_per_epoch = x_train.shape[0] // config.batch_size
    total_steps = math.ceil(config.epochs * steps_per_epoch)
    kilostep_scale = 1024 * (1 + 1 / (1 - config.momentum))
    lr = config.lr / kilostep_scale
    wd = config.weight_decay * config.batch_size / kilostep_scale
    lr_bias = lr * config.bias_scaler
    norm_biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in net.named_parameters() if "norm" not in n and p.requires_grad]
    optimizer = torch.optim.SGD(
        [
            {"params": norm_biases, "lr": lr_bias, "weight_decay": wd / lr_bias},
            {"params": others, "lr": lr, "weight_decay": wd / lr},
        ],
        momentum=config.momentum,
        nesterov=True,
    )
    warmup = int(total_steps * 0.23)

    def schedule(step: int) -> float:
        if step < warmup:
            return 0.2 + 0.8 * step / warmup
        return 1.0 - 0.93 * (step - warmup) / max(1, total_steps - warmup)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    averaged = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    def lookahead(decay: float) -> None:
        state = net.state_dict()
        for key, avg in averaged.items():
            avg.lerp_(state[key], 1 - decay)
            state[key].copy_(avg)

    whiten_bias = net.stem[0].bias
    log: list[dict[str, float]] = []
    step = 0
    bar = tqdm(total=total_steps, desc="train", unit="step")
    epoch = 0
    while step < total_steps:
        images = _translate(padded, x_train.shape[-1], generator) if config.translate else x_train
        mask = flip_mask if epoch % 2 == 0 else ~flip_mask  # alternating flip
        images = torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)
        if config.cutout:
            images = _cutout(images, config.cutout, generator)
        order = torch.randperm(x_train.shape[0], generator=generator).to(dev)
        net.train()
        for i in range(steps_per_epoch):
            if step >= total_steps:
                break
            if step == int(config.whiten_bias_epochs * steps_per_epoch):
                whiten_bias.requires_grad_(False)
            batch = order[i * config.batch_size : (i + 1) * config.batch_size]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=config.bf16):
                logits = net(images[batch])
            loss = F.cross_entropy(
                logits.float(), y_train[batch], label_smoothing=config.label_smoothing, reduction="sum"
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % config.lookahead_every == 0:
                lookahead(0.95**config.lookahead_every * (step / total_steps) ** 3)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item() / len(batch):.3f}")
        epoch += 1
        entry = {"epoch": float(epoch), "elapsed_s": time.perf_counter() - start}
        if config.eval_every_epoch:
            entry["test_accuracy"] = float((evaluate_logits(net, x_test).argmax(1) == y_test).float().mean())
            net.train()
        log.append(entry)
        tqdm.write(json.dumps(entry))
    bar.close()
    lookahead(1.0)  # leave the averaged weights in the network

    temperature_before = fit_temperature(evaluate_logits(net, x_holdout), y_holdout)
    with torch.no_grad():
        net.head.weight.mul_(net.logit_scale / temperature_before)
    net.logit_scale = 1.0
    test_logits = evaluate_logits(net, x_test)
    holdout_logits = evaluate_logits(net, x_holdout)
    accuracy = float((test_logits.argmax(1) == y_test).float().mean())
    flip_logits = evaluate_logits(net, x_test.flip(-1))
    flip_accuracy = float(((test_logits + flip_logits).argmax(1) == y_test).float().mean())
    duration = time.perf_counter() - start

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    weights_path = out_dir / "model.safetensors"
    save_file(weights, str(weights_path))
    metadata = {
        "architecture": "airbench",
        "architecture_kwargs": {"num_classes": len(CLASSES), "widths": list(config.widths), "depth": config.depth},
        "classes": list(CLASSES),
        "input_size": [32, 32],
        "mean": list(CIFAR10_MEAN),
        "std": list(CIFAR10_STD),
        "clean_test_accuracy": accuracy,
        "flip_tta_test_accuracy": flip_accuracy,
        "holdout_accuracy": float((holdout_logits.argmax(1) == y_holdout).float().mean()),
        "holdout_mean_confidence": float(holdout_logits.softmax(1).amax(1).mean()),
        "test_mean_confidence": float(test_logits.softmax(1).amax(1).mean()),
        "temperature": temperature_before / config.logit_scale,
        "holdout": {"per_class": config.holdout_per_class, "seed": config.seed, "indices_sha256": _sha(holdout_idx)},
        "train_images": len(train_idx),
        "data": {"path": str(data_root), "sha256": file_sha256(data_root) if data_root.is_file() else None},
        "weights_sha256": file_sha256(weights_path),
        "training_command": _command_line(),
        "training_config": config.model_dump(mode="json"),
        "duration_s": duration,
        "device": _device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "epochs_log": log,
    }
    (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def _command_line() -> str:
    program = Path(sys.argv[0]).name
    program = "python -m benchmarks.source_model.train" if program in ("train_source.py", "__main__.py") else program
    return " ".join([program, *(shlex.quote(a) for a in sys.argv[1:])])


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="CIFAR-10 directory or tarball")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=float, default=TrainConfig.model_fields["epochs"].default)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-smoothing", type=float, default=0.2)
    parser.add_argument("--widths", type=int, nargs=3, default=(64, 256, 256))
    defaults = TrainConfig()
    parser.add_argument("--depth", type=int, default=defaults.depth, help="conv blocks per stage (>2: residual)")
    parser.add_argument("--cutout", type=int, default=defaults.cutout)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--fp32", action="store_true", help="train in fp32 instead of bf16 autocast")
    parser.add_argument("--eval-every-epoch", action="store_true")
    args = parser.parse_args(argv)
    data = args.data or find_shared_cifar10()
    if data is None:
        parser.error("no --data given and ../shared/data/cifar10-jpeg.tar.gz not found")
    config = TrainConfig(
        epochs=args.epochs,
        seed=args.seed,
        label_smoothing=args.label_smoothing,
        widths=tuple(args.widths),
        depth=args.depth,
        cutout=args.cutout,
        lr=args.lr,
        bf16=not args.fp32,
        eval_every_epoch=args.eval_every_epoch,
    )
    metadata = train_source(config, data, args.out, args.device)
    print(json.dumps({k: metadata[k] for k in ("clean_test_accuracy", "duration_s", "temperature")}))


if __name__ == "__main__":
    main()
