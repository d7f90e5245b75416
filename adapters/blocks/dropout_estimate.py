"""A label-free accuracy estimate from dropout disagreement, in the spirit of AETTA (Lee et al., CVPR 2024).

The step's penultimate features (captured from its own forward, :mod:`adapters.blocks.prototypes`)
go through the classifier ``samples`` times with dropout on them; the share of dropout
predictions that disagree with the step's prediction estimates its error. AETTA's robust
adjustment divides that by (entropy of the mean dropout prediction over the batch / log classes)
cubed, so a model collapsing onto few classes (which makes dropout agree with it) is caught, and
clips it to [0, 1 - 1/classes]. Reported as an accuracy, 1 - the adjusted error.

Deviations: AETTA smooths the estimate with an exponential average over batches (0.6 / 0.4); here
the signal windows average it instead. Dropout (10 samples, as AETTA) is applied to the
classifier's input only, so it costs 10 passes through the last layer, not through the network.
AETTA picks its rate per data set (0.4 on CIFAR-10); here the rate is the model's ``dropout_rate``
source artefact, calibrated on held-out source images (:func:`calibrate_rate`) as the ATC
threshold is, and 0.4 where a model lacks it. A rate fixed for a data set fits a model's
penultimate features no better than by chance: at 0.4, the bundled model's max-pooled features
rarely flip a prediction and the estimate reads 17 points high. The masks come from a generator
seeded by the adapter's step count, so the server and an offline replay give the same estimate.
Off by default (``dropout_estimate``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DEFAULT_RATE = 0.4  # AETTA's CIFAR-10 rate, for a model without a ``dropout_rate`` artefact
CALIBRATION_RATES = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
CALIBRATION_BATCH = 200


def logit_scale_of(module: nn.Module) -> float:
    """The factor a model applies to its classifier's output (airbench's ``logit_scale``; else 1)."""
    return float(getattr(getattr(module, "net", None), "logit_scale", 1.0))


@torch.no_grad()
def dropout_accuracy(
    features: Tensor,
    logits: Tensor,
    classifier: nn.Module,
    seed: int,
    samples: int = 10,
    rate: float = DEFAULT_RATE,
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


@torch.no_grad()
def calibrate_rate(
    features: Tensor, logits: Tensor, labels: Tensor, classifier: nn.Module, logit_scale: float = 1.0, seed: int = 0
) -> tuple[float, float, float]:
    """The rate of :data:`CALIBRATION_RATES` whose estimated error, averaged over shuffled batches
    of :data:`CALIBRATION_BATCH` labelled held-out images, is closest to their true error: (rate,
    estimated error, true error). Shuffled because the estimate's robust adjustment reads a
    class-sorted batch as a collapse."""
    order = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))
    batches = [order[start : start + CALIBRATION_BATCH] for start in range(0, labels.shape[0], CALIBRATION_BATCH)]
    truth = float((logits.argmax(1) != labels).float().mean())
    estimates = {
        rate: sum(
            1.0 - dropout_accuracy(features[i], logits[i], classifier, seed + k, rate=rate, logit_scale=logit_scale)
            for k, i in enumerate(batches)
        )
        / len(batches)
        for rate in CALIBRATION_RATES
    }
    rate = min(estimates, key=lambda r: abs(estimates[r] - truth))
    return rate, estimates[rate], truth
