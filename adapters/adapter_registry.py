"""Adapters by name: ``@register_adapter("tent")`` on the class, ``create_adapter("tent", source,
config)`` to build one for a stream. A new method is one module in :mod:`adapters.methods` with the
decorator."""

from __future__ import annotations

from typing import Any, TypeVar

from adapters.base import Adapter, AdapterConfig
from adapters.registry import Registry
from adapters.source_model import SourceModel

A = TypeVar("A", bound=type[Adapter])

ADAPTERS: Registry[type[Adapter]] = Registry("adapter")


def register_adapter(name: str) -> Any:
    """Class decorator: ``@register_adapter("tent")`` sets ``name`` and registers the class."""

    def decorator(cls: A) -> A:
        cls.name = name
        ADAPTERS.register(name)(cls)
        return cls

    return decorator


def list_adapters(pattern: str = "*") -> list[str]:
    return ADAPTERS.names(pattern)


def get_adapter_class(name: str) -> type[Adapter]:
    return ADAPTERS.get(name)


def create_adapter(name: str, source: SourceModel, config: AdapterConfig | dict[str, Any] | None = None) -> Adapter:
    return ADAPTERS.get(name)(source, config)
