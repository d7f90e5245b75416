"""Losses on logits."""

from __future__ import annotations

import torch
from torch import Tensor


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy of softmax(logits) per row, in nats: -sum_c p_c log p_c."""
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Per row: -sum_c softmax(teacher)_c * log softmax(student)_c (teacher treated as a target)."""
    return -(teacher_logits.softmax(dim=1) * student_logits.log_softmax(dim=1)).sum(dim=1)


def symmetric_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, alpha: float = 0.5) -> Tensor:
    """Per row: alpha * CE(student, teacher) + (1 - alpha) * CE(teacher, student).

    Gradients reach the student through both terms; detach the teacher logits before calling.
    """
    forward = soft_cross_entropy(student_logits, teacher_logits)
    backward = soft_cross_entropy(teacher_logits, student_logits)
    return alpha * forward + (1 - alpha) * backward


def supervised_contrastive(views: Tensor, temperature: float = 0.1, base_temperature: float = 0.1) -> Tensor:
    """SupCon (Khosla et al., 2020), ``contrast_mode='all'``, without labels: the positives of an
    anchor are the other views of the same sample. ``views``: (N, V, D), L2-normalised; returns the
    mean loss over the N * V anchors."""
    n, v, _ = views.shape
    features = torch.cat(views.unbind(dim=1), dim=0)  # (V * N, D), view-major as in the reference
    logits = features @ features.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()  # numerical stability only
    not_self = ~torch.eye(n * v, dtype=torch.bool, device=views.device)
    positives = torch.eye(n, dtype=torch.bool, device=views.device).repeat(v, v) & not_self
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    mean_log_prob_pos = (log_prob * positives).sum(1) / positives.sum(1)
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()
