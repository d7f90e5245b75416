"""Image corruptions for building CIFAR-10-C and ImageNet-C style benchmarks."""

from benchmarks.data.corruptions.constants import (
    ALL_CORRUPTIONS,
    CIFAR,
    COMMON_CORRUPTIONS,
    EXTRA_CORRUPTIONS,
    IMAGENET,
    CorruptionConstants,
)
from benchmarks.data.corruptions.functions import (
    CIFAR_CORRUPTIONS,
    IMAGENET_CORRUPTIONS,
    Corruption,
    corruptions_with,
)

__all__ = [
    "ALL_CORRUPTIONS",
    "CIFAR",
    "CIFAR_CORRUPTIONS",
    "COMMON_CORRUPTIONS",
    "EXTRA_CORRUPTIONS",
    "IMAGENET",
    "IMAGENET_CORRUPTIONS",
    "Corruption",
    "CorruptionConstants",
    "corruptions_with",
]
