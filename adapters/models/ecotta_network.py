"""EcoTTA's network: the frozen source network cut into partitions, each followed by a small meta
network (BN on the partition's output plus a conv branch from its input), and the source-aligned
start of the meta networks. The adapter that trains them is :mod:`adapters.methods.ecotta`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from adapters.errors import AdapterError
from adapters.models.airbench import AirbenchNet
from adapters.source_model import NormalizedModel

# Units per partition for the airbench network (3 stages x 3 units: downsample, plain, residual),
# earlier partitions finer, as Table 13 does for ResNets and WRNs.
PARTITIONS = {4: (1, 2, 3, 3), 3: (3, 3, 3), 5: (1, 2, 1, 2, 3)}


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
