"""Image corruptions for building CIFAR-10-C-style benchmarks."""

from benchmarks.corruptions.cifar import CIFAR_CORRUPTIONS, Corruption

__all__ = ["CIFAR_CORRUPTIONS", "Corruption"]
