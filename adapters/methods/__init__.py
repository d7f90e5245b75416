"""One module per adapter; importing this package registers them all."""

from adapters.methods import norm, source, tent

__all__ = ["norm", "source", "tent"]
