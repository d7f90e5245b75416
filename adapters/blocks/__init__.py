"""Building blocks shared by the adapters; each idea is written once, here."""

from adapters.blocks.augment import AugmentConfig, cotta_augment
from adapters.blocks.ema import ema_update
from adapters.blocks.losses import entropy, soft_cross_entropy, symmetric_cross_entropy
from adapters.blocks.norm import test_batch_norm_layers, use_test_batch_statistics
from adapters.blocks.optim import OptimizerConfig, load_optimizer_tensors, make_optimizer, optimizer_tensors
from adapters.blocks.restore import stochastic_restore
from adapters.blocks.sharing import own_parameters, replace_modules, shared_view

__all__ = [
    "AugmentConfig",
    "OptimizerConfig",
    "cotta_augment",
    "ema_update",
    "entropy",
    "load_optimizer_tensors",
    "make_optimizer",
    "optimizer_tensors",
    "own_parameters",
    "replace_modules",
    "shared_view",
    "soft_cross_entropy",
    "stochastic_restore",
    "symmetric_cross_entropy",
    "test_batch_norm_layers",
    "use_test_batch_statistics",
]
