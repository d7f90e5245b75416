"""A label-free accuracy estimate from dropout disagreement, in the spirit of AETTA (Lee et al., CVPR 2024).

The step's penultimate features (captured from its own forward, :mod:`adapters.blocks.prototypes`)
go through the classifier ``samples`` times with dropout on them; the share of dropout
predictions that disagree with the step's prediction estimates its error. AETTA's robust
adjustment divides that by (entropy of the mean dropout prediction over the batch / log classes)
cubed, so a model collapsing onto few classes (which makes dropout agree with it) is caught, and
clips it to [0, 1 - 1/classes]. Reported as an accuracy, 1 - the adjusted error.

Deviations: AETTA smooths the estimate with an exponential average over batches (0.6 / 0.4); here
the signal windows average it instead. Dropout (rate 0.4, 10 samples: AETTA's CIFAR-10 setting)
is applied to the classifier's input only, so it costs 10 passes through the last layer, not
through the network. The masks come from a generator seeded by the adapter's step count, so the
server and an offline replay give the same estimate. Off by default (``dropout_estimate``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


@torch.no_grad()
def dropout_accuracy(
    features: Tensor,
    logits: Tensor,
    classifier: nn.Module,
    seed: int,
    samples: int = 10,
    rate: float = 0.4,
    logit_scale: float = 1.0,
) -> float:
    """AETTA's adjusted accuracy estimate of the predictions ``logits.argmax(1)`` (see the module)."""
    features = features.float().flatten(1)
    predicted = logits.argmax(1)
    generator = torch.Generator(device=features.device).manual_seed(seed)
    keep = 1.0 - rate
    weight = next(classifier.parameters())
    shape = (samples, *features.shape)
    mask = torch.rand(shape, generator=generator, device=features.device) < keep
    dropped = (features * mask / keep).to(weight.dtype).flatten(0, 1)  # all samples in one classifier pass
    probabilities = (classifier(dropped).float() * logit_scale).softmax(1).view(samples, features.shape[0], -1)
    disagreement = 1.0 - float((probabilities.argmax(2) == predicted).float().mean())
    marginal = probabilities.mean((0, 1))
    classes = logits.shape[1]
    spread = float(-(marginal * marginal.clamp_min(1e-12).log()).sum()) / math.log(classes)
    error = disagreement / max(spread, 1e-6) ** 3
    return 1.0 - min(max(error, 0.0), 1.0 - 1.0 / classes)
