"""Building blocks shared by the adapters; each idea is written once, here."""

from adapters.blocks.augment import AugmentConfig, cotta_augment, cotta_views, crop_and_flip
from adapters.blocks.ema import ema_update
from adapters.blocks.losses import entropy, soft_cross_entropy, supervised_contrastive, symmetric_cross_entropy
from adapters.blocks.norm import test_batch_norm_layers, use_test_batch_statistics
from adapters.blocks.optim import OptimizerConfig, load_optimizer_tensors, make_optimizer, optimizer_tensors
from adapters.blocks.pseudo_label import TeacherTarget, gated_teacher_target
from adapters.blocks.restore import fisher_restore_masks, lower_quantile, masked_restore, stochastic_restore
from adapters.blocks.sharing import own_parameters, replace_modules, shared_view
from adapters.blocks.signals import agreement

__all__ = [
    "AugmentConfig",
    "OptimizerConfig",
    "TeacherTarget",
    "agreement",
    "cotta_augment",
    "cotta_views",
    "crop_and_flip",
    "ema_update",
    "entropy",
    "fisher_restore_masks",
    "gated_teacher_target",
    "load_optimizer_tensors",
    "lower_quantile",
    "make_optimizer",
    "masked_restore",
    "optimizer_tensors",
    "own_parameters",
    "replace_modules",
    "shared_view",
    "soft_cross_entropy",
    "stochastic_restore",
    "supervised_contrastive",
    "symmetric_cross_entropy",
    "test_batch_norm_layers",
    "use_test_batch_statistics",
]
