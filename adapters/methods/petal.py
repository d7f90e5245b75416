"""``petal``: Probabilistic lifelong test-time adaptation (Brahma & Rai, CVPR 2023)."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from adapters.adapter_registry import register_adapter
from adapters.artefacts import SourceData, register_artefact
from adapters.base import AdapterConfig, RoleStateAdapter
from adapters.blocks import (
    AugmentConfig,
    OptimizerConfig,
    agreement,
    crop_and_flip,
    ema_update,
    fisher_restore_masks,
    gated_teacher_target,
    make_optimizer,
    masked_restore,
    own_parameters,
    shared_view,
    soft_cross_entropy,
    stochastic_restore,
    symmetric_cross_entropy,
    use_test_batch_statistics,
)
from adapters.source_model import SourceModel

SWAG = "petal_swag"
PRIOR_EPS = 1e-6  # added to the SWAG variance, as in the official prior term


class PetalConfig(AdapterConfig):
    """CIFAR defaults of the official code. ImageNet: SGD lr 0.01, gate 0.1, loss sce,
    prior_weight 1e-11, fim_quantile 0.003, restore_p 0.001."""

    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    ema_alpha: float = Field(0.999, ge=0.0, le=1.0, description="teacher EMA momentum")
    gate_threshold: float = Field(0.92, ge=0.0, le=1.0, description="AP of the anchor-confidence gate")
    n_augmentations: int = Field(
        32, ge=1, le=128, description="augmented teacher views averaged when the gate fires (the papers: 32)"
    )
    loss: Literal["ce", "sce"] = Field("ce", description="ce for CIFAR, symmetric ce for ImageNet")
    prior_weight: float = Field(1e-9, ge=0, description="spw: weight of the Gaussian SWAG prior")
    restore: Literal["fim", "sres"] = Field("fim", description="PETAL-FIM (Fisher quantile) or PETAL-SRes")
    fim_quantile: float = Field(0.03, ge=0.0, le=1.0, description="FIM: restore elements below this Fisher quantile")
    restore_p: float = Field(0.01, ge=0.0, le=1.0, description="SRes: stochastic restore probability")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


def swa_source(source: SourceModel, swag: dict[str, Tensor]) -> tuple[nn.Module, list[Tensor], list[Tensor]]:
    """The SWA-mean network with test-batch BatchNorm (the anchor), plus the SWA means and the
    prior precisions in ``own_parameters`` order; built once per model and shared by all streams."""
    cached = source.cache.get("petal_swa")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    device = next(source.module.parameters()).device
    anchor = shared_view(source.module)
    names = {id(p): name for name, p in source.module.named_parameters(remove_duplicate=False)}
    means: list[Tensor] = []
    precisions: list[Tensor] = []
    for module in anchor.modules():
        for key, param in list(module._parameters.items()):
            if param is None:
                continue
            name = names[id(param)]
            mean = swag[f"mean.{name}"].to(device)
            module._parameters[key] = nn.Parameter(mean, requires_grad=False)
            means.append(mean)
            precisions.append(1.0 / (swag[f"variance.{name}"].to(device).float() + PRIOR_EPS))
    use_test_batch_statistics(anchor)
    return source.cache.setdefault("petal_swa", (anchor, means, precisions))  # type: ignore[no-any-return]


@register_adapter("petal")
class PetalAdapter(RoleStateAdapter):
    """CoTTA's mean teacher with a Gaussian source prior from SWAG and Fisher-based restore.

    Student, teacher and anchor start from the SWA mean of the source posterior (the SWAG
    artefact), all with test-batch BatchNorm. Per batch: student logits; the gated teacher target
    (anchor confidence below the gate: mean of ``n_augmentations`` augmented teacher logits);
    loss CE(student, target) (or SCE) + prior_weight * 1/2 sum (theta - mu)^2 / (sigma^2 + 1e-6)
    over all parameters; backward; PETAL-FIM takes the one-batch Fisher (squared gradients,
    prior included) and marks the elements below its ``fim_quantile`` over all parameters; one
    optimizer step; teacher EMA; restore the marked elements to the SWA mean (FIM) or a Bernoulli
    ``restore_p`` of all elements (SRes). Returns the pre-update teacher target.

    Per-stream state: student and teacher parameters and the optimizer moments; the SWA mean,
    the prior precisions and the anchor are shared by every stream.

    Deviations from the official code: the Fisher quantile is found with two ``kthvalue``
    selections (exact, O(P)) instead of a sort; augmented views are computed only when the gate
    fires; randomness comes from the adapter's seeded generator. The SWAG run that makes the
    artefact is described in ``build_swag``.
    """

    Config = PetalConfig
    config: PetalConfig
    required_artefacts = (SWAG,)
    paper = "Brahma & Rai, A Probabilistic Framework for Lifelong Test-Time Adaptation, CVPR 2023"

    def _setup(self) -> None:
        self.anchor, self.means, self.precisions = swa_source(self.source, self.artefacts[SWAG])
        self.student = shared_view(self.anchor)
        self.student_params, self.source_params = own_parameters(self.student)
        self.teacher = shared_view(self.anchor)
        self.teacher_params, _ = own_parameters(self.teacher)
        for param in self.teacher_params:
            param.requires_grad_(False)
        self.optimizer = make_optimizer(self.student_params, self.config.optimizer)
        self._signals = {"anchor_confidence": float("nan"), "augmented": float("nan"), "restored": float("nan")}

    def _prior(self) -> Tensor:
        total = torch.zeros((), device=self.student_params[0].device)
        for param, mean, precision in zip(self.student_params, self.means, self.precisions, strict=True):
            total = total + ((param - mean).square() * precision).sum()
        return 0.5 * total

    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        config = self.config
        x = x.contiguous(memory_format=torch.channels_last)
        student_logits = self.student(x)
        pseudo = gated_teacher_target(
            self.anchor, self.teacher, x, config.gate_threshold, config.n_augmentations, self.generator, config.augment
        )
        loss_fn = soft_cross_entropy if config.loss == "ce" else symmetric_cross_entropy
        loss = loss_fn(student_logits, pseudo.logits).mean()
        if config.prior_weight > 0:
            loss = loss + config.prior_weight * self._prior()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        masks = None
        if config.restore == "fim":
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.student_params]
            masks = fisher_restore_masks(grads, config.fim_quantile)
        self.optimizer.step()
        ema_update(self.teacher_params, self.student_params, config.ema_alpha)
        if masks is not None:
            restored = masked_restore(self.student_params, self.means, masks)
        else:
            restored = stochastic_restore(self.student_params, self.means, config.restore_p, self.generator)
        total = sum(p.numel() for p in self.student_params)
        self._signals = {
            "anchor_confidence": pseudo.anchor_confidence,
            "augmented": float(pseudo.augmented),
            "restored": restored / total,
            "teacher_agreement": agreement(student_logits, pseudo.logits),
        }
        return pseudo.logits

    def _parameter_pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        return list(self.teacher_params), list(self.source_params)

    def _feature_network(self) -> nn.Module:
        return self.student  # run once per step on the clean batch

    def _predict(self, x: Tensor) -> Tensor:
        return self.teacher(x.contiguous(memory_format=torch.channels_last))  # type: ignore[no-any-return]

    def _roles(self) -> dict[str, list[Tensor]]:
        return {"student": list(self.student_params), "teacher": list(self.teacher_params)}


# -- source artefact --------------------------------------------------------------------------------
@register_artefact(
    SWAG,
    "PETAL SWAG-diagonal source posterior: SWA mean and variance of every parameter, from 5 extra "
    "epochs of SGD on the training images (snapshots after epochs 2-5)",
    split="train",
)
def build_swag(
    source: SourceModel,
    data: SourceData,
    epochs: int = 5,
    snapshot_from: int = 2,
    batch_size: int = 200,
    lr: float = 8e-4,
    swa_lr: float = 0.01,
    anneal_epochs: int = 3,
    label_smoothing: float = 0.2,
) -> dict[str, Tensor]:
    """The official CIFAR SWAG recipe on a copy of the source network: SGD (momentum 0.9, weight
    decay 5e-4, batch 200) from lr 8e-4 annealed linearly to the SWA lr 0.01 over 3 epochs; the
    running mean and second moment of the parameters after each epoch from ``snapshot_from`` on;
    variance = E[theta^2] - E[theta]^2 (clamped at 0). Random crop (4 px) and flip.

    Deviation: the loss keeps the source model's own label smoothing (0.2 for the bundled model),
    as the official run continues its source model's training recipe; without it the SWA mean
    would lose the calibration that the confidence gate relies on. BatchNorm running statistics
    are not recomputed: every PETAL network uses test-batch statistics.
    """
    net = copy.deepcopy(source.module)  # a real copy: training touches parameters and BN buffers
    named = list(net.named_parameters())
    params = [p for _, p in named]
    for param in params:
        param.requires_grad_(True)
    net.train()
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    device = params[0].device
    n = data.labels.shape[0]
    steps_per_epoch = n // batch_size
    first_moment = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    second_moment = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    snapshots = 0
    bar = tqdm(total=epochs * steps_per_epoch, desc="SWAG", unit="step")
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for step in range(steps_per_epoch):
            bar.update()
            progress = min(1.0, (epoch + step / steps_per_epoch) / anneal_epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr + (swa_lr - lr) * progress
            index = order[step * batch_size : (step + 1) * batch_size]
            x = crop_and_flip(data.images[index], generator).to(device).contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(net(x), data.labels[index].to(device), label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if epoch + 1 >= snapshot_from:
            snapshots += 1
            with torch.no_grad():
                for p, m1, m2 in zip(params, first_moment, second_moment, strict=True):
                    m1 += (p.double() - m1) / snapshots
                    m2 += (p.double().square() - m2) / snapshots
    bar.close()
    out: dict[str, Tensor] = {}
    for (name, _), m1, m2 in zip(named, first_moment, second_moment, strict=True):
        out[f"mean.{name}"] = m1.float()
        out[f"variance.{name}"] = (m2 - m1.square()).clamp_min(0).float()
    out["snapshots"] = torch.tensor(snapshots)
    return out
