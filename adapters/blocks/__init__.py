"""Building blocks shared by the adapters; each idea is written once, here."""

from adapters.blocks.losses import entropy
from adapters.blocks.norm import test_batch_norm_layers, use_test_batch_statistics
from adapters.blocks.optim import OptimizerConfig, load_optimizer_tensors, make_optimizer, optimizer_tensors
from adapters.blocks.sharing import replace_modules, shared_view

__all__ = [
    "OptimizerConfig",
    "entropy",
    "load_optimizer_tensors",
    "make_optimizer",
    "optimizer_tensors",
    "replace_modules",
    "shared_view",
    "test_batch_norm_layers",
    "use_test_batch_statistics",
]
