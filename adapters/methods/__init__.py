"""One module per adapter; importing this package registers them all."""

from adapters.methods import cotta, norm, source, tent

__all__ = ["cotta", "norm", "source", "tent"]
