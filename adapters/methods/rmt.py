"""``rmt``: Robust Mean Teacher (Döbler, Marsden, Yang, CVPR 2023)."""

from __future__ import annotations

from functools import partial

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
    cotta_augment,
    ema_update,
    make_optimizer,
    own_parameters,
    shared_view,
    supervised_contrastive,
    symmetric_cross_entropy,
    use_test_batch_statistics,
)
from adapters.blocks.state import load_role_tensors
from adapters.errors import AdapterError
from adapters.source_model import NormalizedModel, SourceModel

PROTOTYPES = "rmt_prototypes"
REPLAY_BANK = "source_replay_bank"
WARMUP_BATCH_SIZES = (64, 200)


def warmup_artefact(batch_size: int) -> str:
    return f"rmt_warmup_bs{batch_size}"


class RmtConfig(AdapterConfig):
    """CIFAR defaults of the official code, source-free (no warm-up, no replay) by default.

    ImageNet: SGD lr 0.01 (Nesterov), batch 64 (``warmup_batch_size`` 64 with ``warmup``).
    """

    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    ema_alpha: float = Field(0.999, ge=0.0, le=1.0, description="teacher EMA momentum")
    temperature: float = Field(0.1, gt=0, description="contrastive temperature (base temperature equal)")
    projection_dim: int = Field(128, ge=1, le=4096, description="output size of the contrastive projection head")
    lambda_st: float = Field(1.0, ge=0, description="weight of the symmetric-CE self-training loss")
    lambda_cont: float = Field(1.0, ge=0, description="weight of the prototype contrastive loss")
    lambda_src: float = Field(
        0.0, ge=0, description="labelled source replay (needs the source_replay_bank artefact); 0 = source-free"
    )
    warmup: bool = Field(False, description="start from the warm-up checkpoint (source-available variant)")
    warmup_batch_size: int = Field(200, description=f"which warm-up checkpoint: one of {WARMUP_BATCH_SIZES}")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


def _split(module: nn.Module, adapter: str) -> NormalizedModel:
    if not isinstance(module, NormalizedModel) or not module.has_features:
        raise AdapterError(f"adapter {adapter!r} needs a model exposing forward_features and classifier")
    return module


@register_adapter("rmt")
class RmtAdapter(RoleStateAdapter):
    """Mean teacher with symmetric cross-entropy and a contrastive pull towards source prototypes.

    Per batch (all parameters trainable, test-batch BatchNorm everywhere): student features and
    logits on x and on one augmented view (one transform for the whole batch); teacher logits on
    x; the nearest source prototype (cosine) of each test feature; SupCon over the three views
    [prototype, feature, augmented feature] after the projector; loss
    lambda_st * (SCE(s, t) + SCE(s_aug, t)) / 2 + lambda_cont * contrastive (+ lambda_src * CE
    on a labelled source batch); one step over student and projector; teacher EMA. No restore.
    Returns the pre-update ensemble student + teacher logits on x.

    Source artefacts: the class prototypes (always; computed once from the training data by
    ``tta-bench prepare``), the warm-up checkpoint per batch size (``warmup=True``), a labelled
    source bank for replay (``lambda_src > 0``).

    Deviations from the official code: prototypes are computed with the source model in eval mode
    (source running statistics), not with test-batch statistics over shuffled source batches of
    200 (the two agree up to batch noise); the replay draws its labelled batches from a fixed bank
    of source images shipped as an artefact (1 % of the training set) instead of a loader over all
    source data; the projector is initialised from the adapter's seeded generator.
    """

    Config = RmtConfig
    config: RmtConfig
    paper = "Döbler, Marsden, Yang, Robust Mean Teacher for Continual and Gradual Test-Time Adaptation, CVPR 2023"

    @classmethod
    def artefacts_for(cls, config: AdapterConfig) -> tuple[str, ...]:
        assert isinstance(config, RmtConfig)
        if config.warmup and config.warmup_batch_size not in WARMUP_BATCH_SIZES:
            raise AdapterError(f"warmup_batch_size must be one of {WARMUP_BATCH_SIZES}, got {config.warmup_batch_size}")
        needed = [PROTOTYPES]
        if config.warmup:
            needed.append(warmup_artefact(config.warmup_batch_size))
        if config.lambda_src > 0:
            needed.append(REPLAY_BANK)
        return tuple(needed)

    def _setup(self) -> None:
        self.student = _split(shared_view(self.source.module), self.name)
        use_test_batch_statistics(self.student)
        self.student_params, self.source_params = own_parameters(self.student)
        self.teacher = shared_view(self.source.module)
        use_test_batch_statistics(self.teacher)
        self.teacher_params, _ = own_parameters(self.teacher)
        for param in self.teacher_params:
            param.requires_grad_(False)
        device = self.student_params[0].device
        self.prototypes = self.artefacts[PROTOTYPES]["prototypes"].to(device)
        self.projector = self._make_projector(self.prototypes.shape[1]).to(device)
        self.projector_params = list(self.projector.parameters())
        self.optimizer = make_optimizer(self.student_params + self.projector_params, self.config.optimizer)
        if self.config.warmup:
            self._load_warmup(self.artefacts[warmup_artefact(self.config.warmup_batch_size)])
        self._signals = {"loss_st": float("nan"), "loss_cont": float("nan")}

    def _make_projector(self, feature_dim: int) -> nn.Sequential:
        dim = self.config.projection_dim
        projector = nn.Sequential(nn.Linear(feature_dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        with torch.no_grad():  # torch's default Linear init, from the stream's own generator
            for layer in (projector[0], projector[2]):
                assert isinstance(layer, nn.Linear)
                nn.init.kaiming_uniform_(layer.weight, a=5**0.5, generator=self.generator)
                bound = 1 / layer.in_features**0.5
                nn.init.uniform_(layer.bias, -bound, bound, generator=self.generator)
        return projector

    def _load_warmup(self, tensors: dict[str, Tensor]) -> None:
        roles = {"student": list(self.student_params), "teacher": list(self.teacher_params)}
        load_role_tensors(roles, self.optimizer, tensors, "rmt warm-up")

    def _contrastive(self, features: Tensor, augmented_features: Tensor) -> Tensor:
        with torch.no_grad():
            similarity = nn.functional.normalize(features, dim=1) @ nn.functional.normalize(self.prototypes, dim=1).T
            nearest = self.prototypes[similarity.argmax(1)]
        views = torch.stack([nearest, features, augmented_features], dim=1)  # (N, 3, D)
        projected = nn.functional.normalize(self.projector(views.flatten(0, 1)), dim=1).view(*views.shape[:2], -1)
        return supervised_contrastive(projected, self.config.temperature, self.config.temperature)

    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        config = self.config
        x = x.contiguous(memory_format=torch.channels_last)
        features = self.student.features(x)
        student_logits = self.student.classifier(features)
        view = cotta_augment(x, self.generator, config.augment).contiguous(memory_format=torch.channels_last)
        augmented_features = self.student.features(view)
        augmented_logits = self.student.classifier(augmented_features)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss_st = 0.5 * (
            symmetric_cross_entropy(student_logits, teacher_logits).mean()
            + symmetric_cross_entropy(augmented_logits, teacher_logits).mean()
        )
        loss_cont = self._contrastive(features, augmented_features)
        loss = config.lambda_st * loss_st + config.lambda_cont * loss_cont
        if config.lambda_src > 0:
            loss = loss + config.lambda_src * self._replay_loss(x.shape[0], x.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        ema_update(self.teacher_params, self.student_params, config.ema_alpha)
        self._signals = {
            "loss_st": float(loss_st.detach()),
            "loss_cont": float(loss_cont.detach()),
            "teacher_agreement": agreement(student_logits, teacher_logits),
        }
        ensemble: Tensor = student_logits.detach() + teacher_logits
        return ensemble

    def _parameter_pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        return list(self.teacher_params), list(self.source_params)

    def _replay_loss(self, batch_size: int, device: torch.device) -> Tensor:
        bank = self.artefacts[REPLAY_BANK]
        index = torch.randint(bank["labels"].shape[0], (batch_size,), generator=self.generator)
        images = bank["images"][index].to(device).float().div_(255).contiguous(memory_format=torch.channels_last)
        loss: Tensor = nn.functional.cross_entropy(self.student(images), bank["labels"][index].long().to(device))
        return loss

    def _feature_network(self) -> nn.Module:
        return self.teacher  # run once per step on the clean batch

    def _predict(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.student(x) + self.teacher(x)  # type: ignore[no-any-return]

    def _roles(self) -> dict[str, list[Tensor]]:
        return {
            "student": list(self.student_params),
            "teacher": list(self.teacher_params),
            "projector": list(self.projector_params),
        }


# -- source artefacts -------------------------------------------------------------------------------
@register_artefact(
    PROTOTYPES,
    "RMT class prototypes: mean pooled source feature per class over the training images (<= 100k)",
    split="train",
)
@torch.no_grad()
def build_prototypes(source: SourceModel, data: SourceData) -> dict[str, Tensor]:
    module = _split(source.module, "rmt").eval()
    device = next(module.parameters()).device
    classes = len(source.class_names)
    sums: Tensor | None = None
    counts = torch.zeros(classes)
    seen = 0
    batches = tqdm(data.batches(), desc="RMT prototypes", unit="batch", total=-(-data.labels.shape[0] // 500))
    for images, labels in batches:
        if seen >= 100_000:
            break
        features = module.features(images.to(device)).float().cpu()
        sums = torch.zeros(classes, features.shape[1]) if sums is None else sums
        sums.index_add_(0, labels, features)
        counts += torch.bincount(labels, minlength=classes).float()
        seen += labels.shape[0]
    if sums is None or bool((counts == 0).any()):
        raise AdapterError(f"rmt prototypes need images of every class; counts per class {counts.tolist()}")
    return {"prototypes": sums / counts[:, None], "images_per_class": counts}


@register_artefact(
    REPLAY_BANK,
    "labelled source bank for replay: 1 % of the training images (seed 0), uint8",
    split="train",
)
def build_replay_bank(source: SourceModel, data: SourceData, fraction: float = 0.01) -> dict[str, Tensor]:
    count = max(1, int(fraction * data.labels.shape[0]))
    index = torch.randperm(data.labels.shape[0], generator=torch.Generator().manual_seed(0))[:count]
    images = (data.images[index] * 255).round().to(torch.uint8)
    return {"images": images, "labels": data.labels[index].to(torch.int64)}


def build_warmup(source: SourceModel, data: SourceData, batch_size: int, samples: int = 50_000) -> dict[str, Tensor]:
    """The official warm-up: ``samples // batch_size`` steps of SCE(student, teacher) on unlabelled
    source batches with a linearly rising learning rate, each followed by the teacher EMA."""
    adapter = RmtAdapter(source, RmtConfig())
    final_lr = adapter.config.optimizer.lr
    steps = samples // batch_size
    order = torch.randperm(data.labels.shape[0], generator=torch.Generator().manual_seed(0))
    device = adapter.student_params[0].device
    for step in tqdm(range(steps), desc=f"RMT warm-up bs{batch_size}", unit="step"):
        for group in adapter.optimizer.param_groups:
            group["lr"] = final_lr * (step + 1) / steps
        index = order[(torch.arange(batch_size) + step * batch_size) % order.shape[0]]
        x = data.images[index].to(device).contiguous(memory_format=torch.channels_last)
        student_logits = adapter.student(x)
        with torch.no_grad():
            teacher_logits = adapter.teacher(x)
        loss = symmetric_cross_entropy(student_logits, teacher_logits).mean()
        adapter.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        adapter.optimizer.step()
        ema_update(adapter.teacher_params, adapter.student_params, adapter.config.ema_alpha)
    tensors = {k: v for k, v in adapter._state_tensors().items() if not k.startswith("projector.")}
    return {k: v.detach().clone() for k, v in tensors.items()}


for _batch_size in WARMUP_BATCH_SIZES:
    register_artefact(
        warmup_artefact(_batch_size),
        f"RMT source warm-up checkpoint for test batch size {_batch_size} (student, teacher, optimizer)",
        split="train",
    )(partial(build_warmup, batch_size=_batch_size))
