"""Label-free signals of one step, as counts and sums so that they aggregate over batches and streams.

From the logits a step returns (and, where given, the frozen source model's logits for the same
batch): mean entropy and confidence, entropy of the batch-mean prediction and the majority-class
share (collapse onto few classes), agreement with the source prediction, and the ATC accuracy
estimate (Garg et al., 2022: the share of images whose max softmax reaches the threshold fitted on
held-out source data) of the adapted and of the source prediction. The adapted model's own
confidence is no error signal on its own: entropy minimisation makes it confident exactly when
errors pile up; agreement with the source and the ATC estimate of both are the ones to watch.
The BatchNorm-statistics shift says how far the input has drifted from the source data; the
relative distance of the adapted parameters from the source's, the distance of its class-conditional
feature means from the source prototypes (:mod:`adapters.blocks.prototypes`) and (for
teacher-student methods) the student's agreement with its teacher, how far the model itself has
moved. The label dependence of a window (:func:`label_dependence`) says whether its batches are
label-correlated, which makes test-batch statistics biased whatever the model's state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# per-step sums, in this order (a stable layout: windows are stored as tensors in the stream state)
FIELDS = (
    "images",
    "steps",
    "entropy_sum",
    "confidence_sum",
    "marginal_entropy_sum",  # per step, weighted by steps
    "majority_share_sum",  # per step, weighted by steps
    "source_images",  # images for which the source prediction was computed
    "source_agree",
    "atc_images",  # images scored against the ATC threshold (the model has one)
    "atc_adapted",
    "atc_source",
    "bn_steps",  # steps whose batch was scored against the source BatchNorm statistics
    "bn_shift_sum",
    "atc_source_agree",  # images the source is ATC-confident on where the adapted prediction agrees
    "param_steps",  # adaptation steps that measured the parameter distance from the source
    "param_distance_sum",
    "teacher_steps",  # adaptation steps of a teacher-student method
    "teacher_agreement_sum",
    "proto_steps",  # steps whose adapted features were compared with the source prototypes
    "proto_distance_sum",
    "source_marginal_entropy_sum",  # per step: images x entropy of the batch-mean source prediction
    "dependence_windows",  # closed windows whose label dependence was measured (set when a window closes)
    "dependence_sum",
    "dropout_steps",  # steps with the (optional) dropout-disagreement accuracy estimate
    "dropout_accuracy_sum",
    "source_steps",  # steps whose source prediction was computed (the label dependence's step count)
)
# derived ratios: name -> (numerator, denominator)
RATIOS = {
    "mean_entropy": ("entropy_sum", "images"),
    "mean_confidence": ("confidence_sum", "images"),
    "marginal_entropy": ("marginal_entropy_sum", "steps"),
    "majority_share": ("majority_share_sum", "steps"),
    "source_agreement": ("source_agree", "source_images"),
    "atc_accuracy": ("atc_adapted", "atc_images"),
    "atc_accuracy_source": ("atc_source", "atc_images"),
    "bn_shift": ("bn_shift_sum", "bn_steps"),
    # the source is mostly right where it is confident (ATC's premise): disagreeing there is an error
    "confident_source_agreement": ("atc_source_agree", "atc_source"),
    "parameter_distance": ("param_distance_sum", "param_steps"),
    "teacher_agreement": ("teacher_agreement_sum", "teacher_steps"),
    "prototype_distance": ("proto_distance_sum", "proto_steps"),
    "dropout_accuracy": ("dropout_accuracy_sum", "dropout_steps"),
}
# every signal a window reports: the ratios, plus the adapted minus the source ATC estimate
# (negative: by its own confidence calibration, adaptation made the model worse than the source),
# the label dependence of closed windows and the dropout estimate (appended in the order they were
# added, whatever RATIOS' order: guard records store a signal's index)
SIGNALS: tuple[str, ...] = (
    *(name for name in RATIOS if name != "dropout_accuracy"),
    "atc_gap",
    "label_dependence",
    "dropout_accuracy",
)


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


@torch.no_grad()
def step_sums(
    logits: Tensor,
    source_logits: Tensor | None = None,
    atc_threshold: float | None = None,
    bn_shift: float | None = None,
    adapted: dict[str, float] | None = None,
) -> Tensor:
    """The :data:`FIELDS` sums of one step, float64 (len(FIELDS),); ``bn_shift`` is the batch's
    BatchNorm-statistics shift from :mod:`adapters.blocks.bn_shift`; ``adapted`` the adapter's
    ``parameter_distance``, ``teacher_agreement``, ``prototype_distance`` and ``dropout_accuracy``
    when it has them."""
    probs = logits.float().softmax(1)
    n, classes = probs.shape
    predicted = probs.argmax(1)
    out = torch.zeros(len(FIELDS), dtype=torch.float64)
    out[0], out[1] = n, 1
    out[2] = float(_entropy(probs).sum())
    out[3] = float(probs.amax(1).sum())
    out[4] = float(_entropy(probs.mean(0))) / math.log(classes)  # 1: uniform marginal, 0: one class
    out[5] = float(torch.bincount(predicted, minlength=classes).max()) / n
    if source_logits is not None:
        source_probs = source_logits.float().softmax(1)
        out[6] = n
        out[7] = float((source_probs.argmax(1) == predicted).sum())
        if atc_threshold is not None:
            out[8] = n
            out[9] = float((probs.amax(1) >= atc_threshold).sum())
            confident = source_probs.amax(1) >= atc_threshold
            out[10] = float(confident.sum())
            out[13] = float((confident & (source_probs.argmax(1) == predicted)).sum())
        out[20] = n * float(_entropy(source_probs.mean(0)))
        out[25] = 1
    if bn_shift is not None:
        out[11], out[12] = 1, bn_shift
    adapted = adapted or {}
    if "parameter_distance" in adapted:
        out[14], out[15] = 1, adapted["parameter_distance"]
    if "teacher_agreement" in adapted:
        out[16], out[17] = 1, adapted["teacher_agreement"]
    if "prototype_distance" in adapted:
        out[18], out[19] = 1, adapted["prototype_distance"]
    if "dropout_accuracy" in adapted:
        out[23], out[24] = 1, adapted["dropout_accuracy"]
    return out


@torch.no_grad()
def agreement(logits: Tensor, other: Tensor) -> float:
    """Share of rows whose top classes agree (e.g. a student and its teacher)."""
    return float((logits.argmax(1) == other.argmax(1)).float().mean())


def ratios(sums: Tensor) -> dict[str, float]:
    """The derived signals of accumulated sums (those with a zero denominator are absent)."""
    index = {name: i for i, name in enumerate(FIELDS)}
    out = {}
    for name, (top, bottom) in RATIOS.items():
        denominator = float(sums[index[bottom]])
        if denominator > 0:
            out[name] = float(sums[index[top]]) / denominator
    if "atc_accuracy" in out:
        out["atc_gap"] = out["atc_accuracy"] - out["atc_accuracy_source"]
    if float(sums[index["dependence_windows"]]) > 0:
        out["label_dependence"] = float(sums[index["dependence_sum"]]) / float(sums[index["dependence_windows"]])
    return out


def label_dependence(source_marginal: Tensor, window: Tensor) -> float | None:
    """Mutual information (nats) between the step and the source model's predicted class within a
    closed window: ``source_marginal`` is the sum of the window's source probabilities (classes,),
    ``window`` its :data:`FIELDS` sums. About 0 when the batches are drawn alike (i.i.d. images);
    large when each batch holds a few classes that change from batch to batch (label-correlated
    streams, where test-batch statistics mix class with domain). The plug-in estimate is biased
    upwards by about (classes - 1)(steps - 1) / (2 images) (Miller-Madow), which is subtracted, so
    the i.i.d. floor stays near 0 whatever the batch size (an estimate below 0, no evidence of
    dependence, is reported as 0); None when the window has no source predictions or a single step."""
    index = {name: i for i, name in enumerate(FIELDS)}
    images, steps = float(window[index["source_images"]]), float(window[index["source_steps"]])
    if images <= 0 or steps < 2:
        return None
    pooled = source_marginal.double() / images
    within = float(window[index["source_marginal_entropy_sum"]]) / images
    bias = (source_marginal.numel() - 1) * (steps - 1) / (2 * images)
    return max(0.0, float(_entropy(pooled)) - within - bias)
