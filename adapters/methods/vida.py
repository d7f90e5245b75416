"""``vida``: homeostatic visual domain adapters (Liu et al., ICLR 2024), CNN form."""

from __future__ import annotations

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
    cotta_views,
    crop_and_flip,
    ema_update,
    make_optimizer,
    own_parameters,
    shared_view,
    soft_cross_entropy,
    symmetric_cross_entropy,
    use_test_batch_statistics,
)
from adapters.errors import AdapterError
from adapters.models.vida_layers import inject
from adapters.source_model import NormalizedModel, SourceModel

WARMUP = "vida_warmup"
# The first stage's convolutions and the classifier: the high-rank branches are wider than these
# layers and the per-stream state (student + teacher adapters + Adam moments) stays under 10 % of
# the bundled model. Deeper 256-channel layers would need > 256-wide branches each.
DEFAULT_LAYERS = ("net.stages.0.blocks.0.conv", "net.stages.0.blocks.1.conv", "net.stages.0.blocks.2.conv", "net.head")


class VidaConfig(AdapterConfig):
    """CIFAR defaults of the official script where they carry over (Adam, EMA 0.999, 10 views,
    threshold 0.05, CE); the adapters train at 1e-4 (the script's backbone rate; its adapter
    rate 1e-5 assumes the backbone moves too)."""

    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-4))
    ema_alpha: float = Field(0.999, ge=0.0, le=1.0, description="teacher EMA momentum (backbone, if trained)")
    ema_alpha_adapters: float = Field(0.999, ge=0.0, le=1.0, description="teacher EMA momentum of the adapters")
    layers: tuple[str, ...] = Field(DEFAULT_LAYERS, description="names of the Conv2d/Linear layers to inject into")
    low_rank: int = Field(1, ge=1, le=64, description="rank of the low-rank adapter branch")
    high_rank_factor: float = Field(
        2.0, gt=1.0, le=16.0, description="high-rank width = factor x the layer's output width"
    )
    train: Literal["adapters", "all"] = Field("adapters", description="adapters only (the paper) or the backbone too")
    uncertainty: Literal["mc_dropout", "augmentation"] = Field(
        "mc_dropout",
        description="mc_dropout: per-image MC-dropout spread (the paper); augmentation: batch variance of "
        "augmented teacher logits (the official code)",
    )
    n_passes: int = Field(10, ge=2, le=64, description="dropout passes or augmented views for the uncertainty")
    dropout_p: float = Field(0.1, gt=0.0, lt=1.0, description="MC-dropout rate on the classifier input")
    threshold: float = Field(0.05, ge=0.0, description="Theta: uncertainty above it favours the high-rank branch")
    loss: Literal["ce", "sce"] = Field("ce", description="ce for CIFAR, symmetric ce for ImageNet")
    warmup: bool = Field(True, description="start from the warm-up artefact (built for the default layers)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


@register_adapter("vida")
class VidaAdapter(RoleStateAdapter):
    """Low- and high-rank adapters in a frozen CNN, mixed by uncertainty, trained as a mean teacher.

    Student and teacher share the frozen network (test-batch BatchNorm) and each hold their own
    adapters (rank 1 and width 2x the layer, 1x1 branches) in the first stage's convolutions and
    the classifier. Per batch: the uncertainty of the teacher (``mc_dropout``: per image, the
    root mean squared spread of the softmax over ``n_passes`` dropout masks on the classifier
    input, as the paper describes; ``augmentation``: 0.1 x the mean variance of teacher logits
    over augmented views, one scalar per batch, as the official code does); homeostatic knowledge
    allotment: U >= Theta gives lambda_high = 1 + U and lambda_low = 1 - U, otherwise the reverse,
    in student and teacher; teacher logits on the clean input are the target and the returned
    prediction; CE(student, teacher); one Adam step on the adapters; teacher EMA.

    Per-stream state: student and teacher adapters and the Adam moments (plus the backbone copies
    when ``train="all"``). The adapters start from the warm-up artefact.

    Deviations from the official code (ViT only): CNN form (1x1 branches on convolutions and the
    classifier, not linear layers in attention); both lambdas are set (the official setter leaves
    the high-rank scale at 1); adapters only train by default, at 1e-4; the uncertainty is the
    paper's MC-dropout unless ``uncertainty="augmentation"``; no stochastic restore (the CIFAR
    script's implicit p = 0.1 restore of the whole backbone has no counterpart when only adapters
    train).
    """

    Config = VidaConfig
    config: VidaConfig
    paper = "Liu et al., ViDA: Homeostatic Visual Domain Adapter for Continual Test Time Adaptation, ICLR 2024"

    @classmethod
    def artefacts_for(cls, config: AdapterConfig) -> tuple[str, ...]:
        assert isinstance(config, VidaConfig)
        if config.warmup and config.layers != DEFAULT_LAYERS:
            raise AdapterError(
                "the vida warm-up artefact covers the default layers only; with other layers set warmup=false "
                "(adapters then start at zero, equal to the source model) or build a matching warm-up"
            )
        return (WARMUP,) if config.warmup else ()

    def _setup(self) -> None:
        config = self.config
        if config.uncertainty == "mc_dropout" and not (
            isinstance(self.source.module, NormalizedModel) and self.source.module.has_features
        ):
            raise AdapterError("vida's MC-dropout needs a model exposing features and classifier; use augmentation")
        self.student = shared_view(self.source.module)
        self.teacher = shared_view(self.source.module)
        for view in (self.student, self.teacher):
            use_test_batch_statistics(view)
        ranks = (config.low_rank, config.high_rank_factor)
        self.student_layers = inject(self.student, config.layers, *ranks, self.generator)
        self.teacher_layers = inject(self.teacher, config.layers, *ranks, torch.Generator().manual_seed(0))
        self.student_adapters = [p for layer in self.student_layers for p in layer.adapter_parameters()]
        self.teacher_adapters = [p for layer in self.teacher_layers for p in layer.adapter_parameters()]
        warm = self.artefacts.get(WARMUP, {})
        with torch.no_grad():
            for i, (student, teacher) in enumerate(zip(self.student_adapters, self.teacher_adapters, strict=True)):
                start = warm.get(f"adapter.{i}", student.detach().cpu()).to(student.device)
                student.copy_(start)
                teacher.copy_(start)
        self.student_backbone: list[nn.Parameter] = []
        self.teacher_backbone: list[nn.Parameter] = []
        if config.train == "all":
            adapter_ids = {id(p) for p in self.student_adapters + self.teacher_adapters}
            self.student_backbone, _ = own_parameters(
                self.student, lambda m, n: id(m._parameters[n]) not in adapter_ids
            )
            self.teacher_backbone, _ = own_parameters(
                self.teacher, lambda m, n: id(m._parameters[n]) not in adapter_ids
            )
        for param in self.teacher_adapters + self.teacher_backbone:
            param.requires_grad_(False)
        self.optimizer = make_optimizer(self.student_adapters + self.student_backbone, config.optimizer)
        self._signals = {"uncertainty": float("nan"), "high_rank_share": float("nan")}

    @torch.no_grad()
    def _uncertainty(self, x: Tensor) -> Tensor:
        config = self.config
        for layer in self.teacher_layers:  # measured with both branches at weight 1
            layer.scale_low = layer.scale_high = 1.0
        if config.uncertainty == "augmentation":
            per_pass = config.augment.views_per_pass  # bounds the memory of one batched pass
            chunks = [min(per_pass, config.n_passes - start) for start in range(0, config.n_passes, per_pass)]
            views = torch.stack(
                [
                    self.teacher(view).float()
                    for n in chunks
                    for view in cotta_views(x, self.generator, n, config.augment)
                ]
            )
            return 0.1 * views.var(dim=0).mean()  # one scalar for the batch
        teacher = self.teacher
        assert isinstance(teacher, NormalizedModel)
        features = teacher.features(x)
        probs = []
        for _ in range(config.n_passes):
            keep = (torch.rand(features.shape, generator=self.generator) >= config.dropout_p).to(features.device)
            probs.append(teacher.classifier(features * keep / (1 - config.dropout_p)).softmax(1))
        stacked = torch.stack(probs)
        return (stacked - stacked.mean(0)).square().sum(2).mean(0).sqrt()  # per image

    def _allot(self, uncertainty: Tensor) -> None:
        uncertainty = uncertainty.float()  # the scales are fp32 whatever the step's precision
        high = uncertainty >= self.config.threshold
        scale_high = torch.where(high, 1 + uncertainty, 1 - uncertainty)
        scale_low = torch.where(high, 1 - uncertainty, 1 + uncertainty)
        for layer in self.student_layers + self.teacher_layers:
            layer.scale_low, layer.scale_high = scale_low, scale_high  # both (the official code sets one)

    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        config = self.config
        x = x.contiguous(memory_format=torch.channels_last)
        uncertainty = self._uncertainty(x)
        self._allot(uncertainty)
        with torch.no_grad():
            target = self.teacher(x)
        student_logits = self.student(x)
        loss_fn = soft_cross_entropy if config.loss == "ce" else symmetric_cross_entropy
        loss = loss_fn(student_logits, target).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        ema_update(self.teacher_adapters, self.student_adapters, config.ema_alpha_adapters)
        if self.student_backbone:
            ema_update(self.teacher_backbone, self.student_backbone, config.ema_alpha)
        self._signals = {
            "uncertainty": float(uncertainty.float().mean()),
            "high_rank_share": float((uncertainty >= config.threshold).float().mean()),
            "teacher_agreement": agreement(student_logits, target),
        }
        prediction: Tensor = target
        return prediction

    def _predict(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        self._allot(self._uncertainty(x))
        return self.teacher(x)  # type: ignore[no-any-return]

    def _roles(self) -> dict[str, list[Tensor]]:
        return {
            "student": list(self.student_adapters),
            "teacher": list(self.teacher_adapters),
            "student_backbone": list(self.student_backbone),
            "teacher_backbone": list(self.teacher_backbone),
        }


@register_artefact(
    WARMUP,
    "ViDA adapters (default layers) pre-trained with cross-entropy on the training images, network frozen",
    split="train",
)
def build_warmup(
    source: SourceModel, data: SourceData, steps: int = 500, batch_size: int = 64, lr: float = 1e-4
) -> dict[str, Tensor]:
    """'Several iterations' of source training for the adapters alone (both lambdas 1): Adam,
    cross-entropy, random crop and flip, test-batch BatchNorm as at test time; ``steps`` at most,
    and at most one pass over the data."""
    config = VidaConfig()
    view = shared_view(source.module)
    use_test_batch_statistics(view)
    layers = inject(view, config.layers, config.low_rank, config.high_rank_factor, torch.Generator().manual_seed(0))
    params = [p for layer in layers for p in layer.adapter_parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(0)
    device = params[0].device
    order = torch.randperm(data.labels.shape[0], generator=generator)
    steps = max(1, min(steps, data.labels.shape[0] // batch_size))
    for step in tqdm(range(steps), desc="ViDA warm-up", unit="step"):
        index = order[(torch.arange(batch_size) + step * batch_size) % order.shape[0]]
        x = crop_and_flip(data.images[index], generator).to(device).contiguous(memory_format=torch.channels_last)
        loss = nn.functional.cross_entropy(view(x), data.labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {f"adapter.{i}": p.detach().cpu().clone() for i, p in enumerate(params)}
