"""``ecotta``: memory-efficient continual TTA with meta networks (Song et al., CVPR 2023)."""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from adapters.artefacts import SourceData, register_artefact
from adapters.base import AdapterConfig, RoleStateAdapter, register_adapter
from adapters.blocks import (
    OptimizerConfig,
    crop_and_flip,
    entropy,
    make_optimizer,
    shared_view,
    use_test_batch_statistics,
)
from adapters.errors import AdapterError
from adapters.models.airbench import AirbenchNet
from adapters.source_model import NormalizedModel, SourceModel

WARMUP = "ecotta_warmup"
ALIGN_IMAGES = 10_000  # source images whose partition-output statistics start the meta BNs
# Units per partition for the airbench network (3 stages x 3 units: downsample, plain, residual),
# earlier partitions finer, as Table 13 does for ResNets and WRNs.
PARTITIONS = {4: (1, 2, 3, 3), 3: (3, 3, 3), 5: (1, 2, 1, 2, 3)}


class EcottaConfig(AdapterConfig):
    """Community CIFAR defaults: SGD lr 5e-3, momentum 0.9; E0 = 0.4 ln C; lambda 0.25."""

    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(name="sgd", lr=5e-3, momentum=0.9, nesterov=False)
    )
    partitions: Literal[3, 4, 5] = Field(
        4, description="K: the number of partitions (units 3,3,3 / 1,2,3,3 / 1,2,1,2,3)"
    )
    entropy_margin: float = Field(0.4, gt=0, description="E0 = margin * ln(C): samples above it get no gradient")
    reg_weight: float = Field(0.25, ge=0, description="lambda of the self-distilled L1 regulariser")
    kernel_size: Literal[1, 3] = Field(1, description="meta conv kernel: 1 (default, keeps the state small) or 3")
    backprop_frozen: bool = Field(
        False,
        description="also backpropagate through the frozen blocks (keeps their activations); by default the "
        "gradient reaches earlier meta networks only through the later meta networks, as the method's memory "
        "saving requires",
    )


class _Unit(nn.Module):
    """One sequential unit of a stage: a block, or ``x + block(x)`` for the residual ones."""

    def __init__(self, block: nn.Module, residual: bool) -> None:
        super().__init__()
        self.block = block
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.block(x)
        return x + out if self.residual else out


class MetaNetwork(nn.Module):
    """BN on the frozen partition output plus ReLU(BN(conv)) from the max-pooled partition input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel_size: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(out_channels)
        self.conv = nn.Sequential(
            # downsample first, as the frozen blocks' max-pool does (same output size on odd inputs),
            # so the conv runs and keeps its activations at the small resolution
            nn.MaxPool2d(stride) if stride > 1 else nn.Identity(),
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def start_near_identity(self, mean: Tensor, std: Tensor, branch_scale: float) -> None:
        """BN affine = the source output's statistics; conv branch scaled down to ``branch_scale``."""
        branch_norm = self.conv[2]
        assert isinstance(branch_norm, nn.BatchNorm2d)
        with torch.no_grad():
            self.norm.weight.copy_(std)
            self.norm.bias.copy_(mean)
            branch_norm.weight.fill_(branch_scale)
            branch_norm.bias.zero_()

    def forward(self, frozen_output: Tensor, partition_input: Tensor) -> Tensor:
        out: Tensor = self.norm(frozen_output) + self.conv(partition_input)
        return out


def _units(net: AirbenchNet) -> list[tuple[nn.Module, int, int, int]]:
    """(unit, in channels, out channels, stride) for the 9 units of an airbench network."""
    units: list[tuple[nn.Module, int, int, int]] = []
    for stage in net.stages:
        blocks = list(stage.blocks)  # type: ignore[arg-type]
        for index, block in enumerate(blocks):
            conv = block.conv
            stride = 2 if index == 0 else 1  # the first block of a stage max-pools by 2
            units.append((_Unit(block, residual=index >= 2), conv.in_channels, conv.out_channels, stride))
    return units


def build_meta_networks(net: AirbenchNet, partitions: int, kernel_size: int) -> nn.ModuleList:
    """One meta network per partition, initialised by torch's defaults (they need the warm-up)."""
    metas = []
    for first, count in _partition_ranges(net, partitions):
        units = _units(net)[first : first + count]
        stride = math.prod(u[3] for u in units)
        metas.append(MetaNetwork(units[0][1], units[-1][2], stride, kernel_size))
    return nn.ModuleList(metas)


def _partition_ranges(net: AirbenchNet, partitions: int) -> list[tuple[int, int]]:
    if partitions not in PARTITIONS:
        raise AdapterError(f"ecotta partitions must be one of {sorted(PARTITIONS)}, got {partitions}")
    sizes = PARTITIONS[partitions]
    if sum(sizes) != len(_units(net)):
        raise AdapterError(f"ecotta partitions {sizes} do not cover the network's {len(_units(net))} units")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return list(zip(starts, sizes, strict=True))


class EcottaNetwork(nn.Module):
    """The frozen network with a meta network per partition: x_k = BN_k(F_k(x_{k-1})) + G_k(x_{k-1})."""

    def __init__(
        self, frozen: NormalizedModel, metas: nn.ModuleList, partitions: int, backprop_frozen: bool = True
    ) -> None:
        super().__init__()
        self.backprop_frozen = backprop_frozen
        net = frozen.net
        if not isinstance(net, AirbenchNet):
            raise AdapterError("ecotta's partitions are defined for the airbench network")
        self.frozen = frozen
        self.metas = metas
        units = _units(net)
        self.partitions = nn.ModuleList(
            nn.Sequential(*(u[0] for u in units[first : first + count]))
            for first, count in _partition_ranges(net, partitions)
        )
        self.distances: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        net = self.frozen.net
        assert isinstance(net, AirbenchNet)
        with torch.no_grad():
            h = net.stem(self.frozen.normalizer(x))
        distances = []
        for partition, meta in zip(self.partitions, self.metas, strict=True):
            with torch.set_grad_enabled(self.backprop_frozen and torch.is_grad_enabled()):
                frozen_out = partition(h)  # without backprop, no activation of the frozen block is kept
            adapted = meta(frozen_out, h)
            # self-distillation: meta network k alone is pulled towards the frozen output on its input
            detached = meta(frozen_out.detach(), h.detach()) if self.training else adapted
            distances.append((detached - frozen_out.detach()).abs().mean())
            h = adapted
        self.distances = distances
        return net.head(torch.flatten(net.pool(h), 1))  # type: ignore[no-any-return]


@register_adapter("ecotta")
class EcottaAdapter(RoleStateAdapter):
    """Meta networks on a frozen network, trained by filtered entropy plus self-distillation.

    The bundled network's 9 units (per stage: downsample block, block, residual block) form K
    partitions (K=4: 1, 2, 3, 3 units). Each partition's frozen output is post-normalised by a
    meta BN and gets a conv-BN-ReLU correction from the partition input. Only the meta networks
    train (SGD); every BatchNorm uses test-batch statistics; no teacher, no augmentation. Loss:
    the mean entropy of the samples below E0 = 0.4 ln C, plus lambda * sum_k mean |x_k - F_k|,
    where the regulariser sees detached inputs, so it trains meta network k alone. Returns the
    pre-update logits. The meta networks start from the warm-up artefact (cross-entropy on the
    source training images, original network frozen).

    Memory: the frozen blocks run without autograd, so none of their activations are kept; the
    gradient reaches an earlier meta network through the later meta networks' conv blocks
    (``backprop_frozen=True`` also backpropagates through the frozen blocks, as a plain reading
    of the forward would, at more step memory; benchmarks/results/adapter_speed.md). On the
    bundled model that variant with SGD lr 0.05, chosen on the severity-3 stream, is the more
    accurate one (CIFAR-10-C severity 5: 21.2 % vs 21.7 %, norm 21.8 %;
    benchmarks/results/ecotta_severity3_validation.md).

    Per-stream state: meta network parameters and their momentum buffers.

    Deviations: no official code exists (this follows the paper's appendix); 1x1 meta
    convolutions by default (3x3 in the community code) so that the per-stream state stays under
    10 % of the model; the meta networks start from the source-aligned initialisation
    (:func:`source_aligned_init`: meta BN affine = the source statistics of the partition output,
    conv branch scaled to 0.01) before the community warm-up, because from a random
    initialisation the warmed network was worse than test-batch normalisation before any
    adaptation (benchmarks/results/cifar10c_jpeg_continual_ecotta_vida_variants.md); the
    regulariser re-applies the meta network to detached inputs (the appendix detaches the input
    the same way) at the cost of one extra pass through the small meta networks only; the warm-up
    (offline, not memory-bound) backpropagates through the whole network.
    """

    Config = EcottaConfig
    config: EcottaConfig
    paper = "Song et al., EcoTTA: Memory-Efficient Continual Test-time Adaptation via Self-distilled Regularization"

    @classmethod
    def artefacts_for(cls, config: AdapterConfig) -> tuple[str, ...]:
        assert isinstance(config, EcottaConfig)
        return (warmup_name(config.partitions, config.kernel_size),)

    def _setup(self) -> None:
        frozen = shared_view(self.source.module)
        if not isinstance(frozen, NormalizedModel) or not isinstance(frozen.net, AirbenchNet):
            raise AdapterError("ecotta needs the airbench network (its partitions are defined for it)")
        use_test_batch_statistics(frozen)
        metas = build_meta_networks(frozen.net, self.config.partitions, self.config.kernel_size)
        use_test_batch_statistics(metas)
        metas.load_state_dict(_meta_state(self.artefacts[warmup_name(self.config.partitions, self.config.kernel_size)]))
        metas.to(next(self.source.module.parameters()).device)
        self.model = EcottaNetwork(frozen, metas, self.config.partitions, self.config.backprop_frozen)
        self.meta_params = list(metas.parameters())
        self.optimizer = make_optimizer(self.meta_params, self.config.optimizer)
        self.margin = self.config.entropy_margin * math.log(len(self.source.class_names))
        self._signals = {"kept_fraction": float("nan"), "regulariser": float("nan")}

    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        self.model.train()
        logits = self.model(x)
        entropies = entropy(logits)
        kept = entropies < self.margin  # samples above E0 give no gradient
        loss_entropy = entropies[kept].mean() if bool(kept.any()) else entropies.sum() * 0.0
        regulariser = torch.stack(self.model.distances).sum()
        loss = loss_entropy + self.config.reg_weight * regulariser
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._signals = {"kept_fraction": float(kept.float().mean()), "regulariser": float(regulariser.detach())}
        prediction: Tensor = logits
        return prediction

    def _predict(self, x: Tensor) -> Tensor:
        self.model.eval()
        return self.model(x.contiguous(memory_format=torch.channels_last))  # type: ignore[no-any-return]

    def _roles(self) -> dict[str, list[Tensor]]:
        return {"meta": list(self.meta_params)}


def source_aligned_init(
    model: EcottaNetwork, images: Tensor, batch_size: int = 200, branch_scale: float = 0.01
) -> None:
    """Start the meta networks next to the identity on source batches (a deviation: the method
    starts them from random weights and relies on the warm-up alone).

    Meta BN k's affine re-applies the per-channel mean and standard deviation of partition k's
    frozen output (averaged over source batches, with test-batch BN as at test time), so on source
    data it returns its input and on shifted data it realigns the output's statistics to the
    source. The conv branch's BN scale starts at ``branch_scale`` (not 0: the ReLU after it would
    pass no gradient), so the branch adds almost nothing until the warm-up trains it.
    """
    net = model.frozen.net
    assert isinstance(net, AirbenchNet)
    stats: list[list[tuple[Tensor, Tensor]]] = [[] for _ in model.metas]
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].contiguous(memory_format=torch.channels_last)
            h = net.stem(model.frozen.normalizer(x))
            for partition, per_batch in zip(model.partitions, stats, strict=True):
                h = partition(h)
                per_batch.append((h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)))
        for meta, per_batch in zip(model.metas, stats, strict=True):
            assert isinstance(meta, MetaNetwork)
            mean = torch.stack([m for m, _ in per_batch]).mean(0)
            std = torch.stack([v.add(meta.norm.eps).sqrt() for _, v in per_batch]).mean(0)
            meta.start_near_identity(mean, std, branch_scale)


def warmup_name(partitions: int, kernel_size: int) -> str:
    return WARMUP if (partitions, kernel_size) == (4, 1) else f"{WARMUP}_k{partitions}_conv{kernel_size}"


def _meta_state(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[5:]: v for k, v in tensors.items() if k.startswith("meta.")}


def build_warmup(
    source: SourceModel,
    data: SourceData,
    partitions: int = 4,
    kernel_size: int = 1,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.05,
    aligned_init: bool = True,
) -> dict[str, Tensor]:
    """Source-aligned initialisation (``aligned_init``, on 10,000 training images), then the
    community CIFAR recipe: 10 epochs, SGD lr 0.05 (momentum 0.9) with a linear warm-up over
    the first epoch and x0.2 steps at epochs 3, 6 and 8, batch 64, random crop and flip.
    BatchNorm layers use batch statistics, as at test time, and the meta BNs keep no running
    statistics. The community's colour jitter / blur / greyscale are left out: with them the
    continual CIFAR-10-C error rose from 22.2 % to 22.5 % (random initialisation)."""

    frozen = shared_view(source.module)
    if not isinstance(frozen, NormalizedModel) or not isinstance(frozen.net, AirbenchNet):
        raise AdapterError("ecotta needs the airbench network")
    use_test_batch_statistics(frozen)
    device = next(source.module.parameters()).device
    metas = build_meta_networks(frozen.net, partitions, kernel_size).to(device)
    use_test_batch_statistics(metas)
    model = EcottaNetwork(frozen, metas, partitions).train()
    generator = torch.Generator().manual_seed(0)
    if aligned_init:
        subset = torch.randperm(data.labels.shape[0], generator=generator)[:ALIGN_IMAGES]
        source_aligned_init(model, data.images[subset].to(device))
    optimizer = torch.optim.SGD(metas.parameters(), lr=lr, momentum=0.9)
    steps_per_epoch = data.labels.shape[0] // batch_size
    total = epochs * steps_per_epoch
    for step in tqdm(range(total), desc="EcoTTA warm-up", unit="step"):
        milestones = (0.3, 0.6, 0.8)  # epochs 3, 6, 8 of 10
        scale = min(1.0, (step + 1) / steps_per_epoch) * (0.2 ** sum(step >= total * m for m in milestones))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        if step % steps_per_epoch == 0:
            order = torch.randperm(data.labels.shape[0], generator=generator)
        index = order[(step % steps_per_epoch) * batch_size : (step % steps_per_epoch + 1) * batch_size]
        x = crop_and_flip(data.images[index], generator).to(device).contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(model(x), data.labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {f"meta.{k}": v.detach().cpu().clone() for k, v in metas.state_dict().items()}


for _partitions in sorted(PARTITIONS):
    for _kernel in (1, 3):
        register_artefact(
            warmup_name(_partitions, _kernel),
            f"EcoTTA meta networks (K={_partitions}, {_kernel}x{_kernel} convs), started from the source-aligned "
            "initialisation and warmed up with cross-entropy on the training images, original network frozen",
            split="train",
        )(partial(build_warmup, partitions=_partitions, kernel_size=_kernel))
