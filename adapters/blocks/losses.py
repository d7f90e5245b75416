"""Losses on logits (methods.md B4)."""

from __future__ import annotations

from torch import Tensor


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy of softmax(logits) per row, in nats: -sum_c p_c log p_c."""
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)
