"""One module per adapter; importing this package registers them all."""

from adapters.methods import cotta, ecotta, norm, petal, rmt, source, tent, vida

__all__ = ["cotta", "ecotta", "norm", "petal", "rmt", "source", "tent", "vida"]
