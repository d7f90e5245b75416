"""One module per adapter; importing this package registers them all."""

from adapters.methods import cotta, norm, petal, rmt, source, tent

__all__ = ["cotta", "norm", "petal", "rmt", "source", "tent"]
