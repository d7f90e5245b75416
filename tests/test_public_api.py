"""The packages' public surface is explicit and sorted."""

from __future__ import annotations

import adapters
import tta_server


def test_adapters_exports() -> None:
    assert len(set(adapters.__all__)) == len(adapters.__all__)
    for name in adapters.__all__:
        assert hasattr(adapters, name)
    assert {"Adapter", "SourceModel", "create_adapter", "create_source_model", "register_adapter"} <= set(
        adapters.__all__
    )


def test_server_exports() -> None:
    assert tta_server.__all__ == ["Settings", "__version__", "create_app"]
