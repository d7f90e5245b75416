"""``cotta``: Continual Test-Time Adaptation (Wang et al., CVPR 2022)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from adapters.adapter_registry import register_adapter
from adapters.base import AdapterConfig, RoleStateAdapter
from adapters.blocks import (
    AugmentConfig,
    OptimizerConfig,
    agreement,
    ema_update,
    gated_teacher_target,
    make_optimizer,
    own_parameters,
    shared_view,
    soft_cross_entropy,
    stochastic_restore,
    symmetric_cross_entropy,
    use_test_batch_statistics,
)
from adapters.source_model import SourceModel


class CottaConfig(AdapterConfig):
    """CIFAR defaults of the official code; ImageNet: SGD lr 0.01, restore_p 0.001, gate 0.1, loss sce."""

    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    ema_alpha: float = Field(0.999, ge=0.0, le=1.0, description="teacher EMA momentum")
    restore_p: float = Field(0.01, ge=0.0, le=1.0, description="stochastic restore probability per element")
    gate_threshold: float = Field(
        0.92, ge=0.0, le=1.0, description="AP: augment when the batch-mean anchor confidence is below it"
    )
    n_augmentations: int = Field(
        32, ge=1, le=128, description="augmented teacher views averaged when the gate fires (the papers: 32)"
    )
    loss: Literal["ce", "sce"] = Field("ce", description="ce for CIFAR, symmetric ce (1/2, 1/2) for ImageNet")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


def shared_anchor(source: SourceModel) -> nn.Module:
    """The source weights with test-batch BatchNorm: built once per model, shared by all streams."""
    anchor = source.cache.get("cotta_anchor")
    if anchor is None:
        anchor = shared_view(source.module)
        use_test_batch_statistics(anchor)
        anchor = source.cache.setdefault("cotta_anchor", anchor)
    return anchor  # type: ignore[no-any-return]


@register_adapter("cotta")
class CottaAdapter(RoleStateAdapter):
    """Mean teacher with augmentation-averaged pseudo-labels, a confidence gate and stochastic restore.

    Per batch: student logits; anchor confidence (batch mean of the max softmax of the source
    weights with test-batch statistics); teacher logits on x, or the mean of
    ``n_augmentations`` teacher logits on augmented views when the confidence is below the gate;
    loss CE(student, teacher) (or symmetric CE); one optimizer step; teacher EMA; stochastic
    restore of the student towards the source. Returns the pre-update teacher output.

    Per-stream state: student and teacher parameters and the optimizer moments. The anchor and
    the restore target are the shared source tensors, never copied.

    Deviations from the official code: the augmented views are computed only when the gate fires
    (the official CIFAR code computes and then discards them; outputs are identical); randomness
    (augmentation, restore masks) comes from the adapter's own seeded generator; ``predict``
    (no update, used for buffered small requests) returns the teacher on the clean input.
    """

    Config = CottaConfig
    config: CottaConfig
    paper = "Wang et al., Continual Test-Time Domain Adaptation, CVPR 2022"

    def _setup(self) -> None:
        self.anchor = shared_anchor(self.source)
        self.student = shared_view(self.source.module)
        use_test_batch_statistics(self.student)
        self.student_params, self.source_params = own_parameters(self.student)
        self.teacher = shared_view(self.source.module)
        use_test_batch_statistics(self.teacher)
        self.teacher_params, _ = own_parameters(self.teacher)
        for param in self.teacher_params:
            param.requires_grad_(False)
        self.optimizer = make_optimizer(self.student_params, self.config.optimizer)
        self._signals = {"anchor_confidence": float("nan"), "augmented": float("nan"), "loss": float("nan")}

    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        student_logits = self.student(x)
        config = self.config
        pseudo = gated_teacher_target(
            self.anchor, self.teacher, x, config.gate_threshold, config.n_augmentations, self.generator, config.augment
        )
        target = pseudo.logits
        if config.loss == "ce":
            loss = soft_cross_entropy(student_logits, target).mean()
        else:
            loss = symmetric_cross_entropy(student_logits, target).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        ema_update(self.teacher_params, self.student_params, self.config.ema_alpha)
        stochastic_restore(self.student_params, self.source_params, self.config.restore_p, self.generator)
        self._signals = {
            "anchor_confidence": pseudo.anchor_confidence,
            "augmented": float(pseudo.augmented),
            "loss": float(loss.detach()),
            "teacher_agreement": agreement(student_logits, target),
        }
        return target

    def _feature_network(self) -> nn.Module:
        return self.student  # run once per step on the clean batch

    def _predict(self, x: Tensor) -> Tensor:
        return self.teacher(x.contiguous(memory_format=torch.channels_last))  # type: ignore[no-any-return]

    def _roles(self) -> dict[str, list[Tensor]]:
        return {"student": list(self.student_params), "teacher": list(self.teacher_params)}

    def _parameter_pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        return list(self.teacher_params), list(self.source_params)  # the teacher is what predicts
