"""Losses on logits (methods.md B4)."""

from __future__ import annotations

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
