"""Distance of the adapted model's class-conditional feature means to the source prototypes.

In the spirit of PeTTA's divergence (Hoang et al., NeurIPS 2024): for every class the adapted
model predicts in a batch, the mean of those images' penultimate features, compared with that
class's source prototype (the mean source feature of the class, the ``rmt_prototypes``
artefact). Reported as the relative L2 distance ||mu_c - p_c|| / ||p_c||, averaged over the
predicted classes weighted by their image counts. It grows as the model's features drift away
from the source's class structure (collapse, error accumulation), without labels. The features
are captured from the step's own forward (a hook on the classifier's input), never recomputed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def prototype_distance(features: Tensor, predicted: Tensor, prototypes: Tensor) -> float:
    """Count-weighted mean over predicted classes of ||mean feature - prototype|| / ||prototype||."""
    features, prototypes = features.float().flatten(1), prototypes.to(features.device).float()
    classes = prototypes.shape[0]
    counts = torch.bincount(predicted, minlength=classes).float()
    sums = torch.zeros_like(prototypes).index_add_(0, predicted, features)
    present = counts > 0
    means = sums[present] / counts[present, None]
    relative = (means - prototypes[present]).norm(dim=1) / prototypes[present].norm(dim=1).clamp_min(1e-12)
    return float((relative * counts[present]).sum() / counts.sum())


class FeatureCapture:
    """Keeps the input (pooled features) and output (logits) of the last call of ``classifier``."""

    def __init__(self, classifier: nn.Module) -> None:
        self.classifier = classifier  # the dropout estimate runs it again on perturbed features
        self.features: Tensor | None = None
        self.logits: Tensor | None = None
        self.handle = classifier.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.features, self.logits = inputs[0].detach(), output.detach()

    def take(self) -> tuple[Tensor, Tensor] | None:
        """The captured (features, logits), cleared so a stale capture is never reused."""
        if self.features is None or self.logits is None:
            return None
        captured, self.features, self.logits = (self.features, self.logits), None, None
        return captured

    def remove(self) -> None:
        self.handle.remove()
