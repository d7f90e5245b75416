"""The gated, augmentation-averaged teacher target of CoTTA and PETAL."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from adapters.blocks.augment import AugmentConfig, cotta_views


@dataclass(frozen=True)
class TeacherTarget:
    logits: Tensor
    anchor_confidence: float  # batch mean of the anchor's max softmax
    augmented: bool  # whether the gate fired and the views were averaged


@torch.no_grad()
def gated_teacher_target(
    anchor: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    threshold: float,
    n_augmentations: int,
    generator: torch.Generator,
    augment: AugmentConfig,
) -> TeacherTarget:
    """The teacher on ``x`` when the batch-mean anchor confidence reaches ``threshold``; otherwise
    the mean teacher logits over ``n_augmentations`` views, one random transform per view. The
    views are computed only when the gate fires."""
    confidence = float(anchor(x).softmax(1).amax(1).mean())
    if confidence >= threshold:
        return TeacherTarget(teacher(x), confidence, False)
    total = torch.zeros((), device=x.device)
    for start in range(0, n_augmentations, augment.views_per_pass):
        # one batched pass builds several views; each is its own teacher forward, so each keeps
        # its own test-batch statistics as in the reference
        for view in cotta_views(x, generator, min(augment.views_per_pass, n_augmentations - start), augment):
            total = total + teacher(view.contiguous(memory_format=torch.channels_last)).float()
    return TeacherTarget(total / n_augmentations, confidence, True)
