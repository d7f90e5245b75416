"""Short, readable labels of replay runs."""

from __future__ import annotations

import json
from typing import Any


def _flat(config: dict[str, Any], prefix: str = "") -> list[str]:
    parts: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict):
            parts += _flat(value, f"{prefix}{key}.")
        else:
            parts.append(f"{prefix}{key}={json.dumps(value) if isinstance(value, list | bool) else value}")
    return parts


def run_label(result: dict[str, Any], width: int = 40) -> str:
    """The run's ``label`` if it has one, else the adapter's name with its non-default settings as
    short ``key=value`` pairs (nested keys dotted), cut to about ``width`` characters."""
    if result.get("label"):
        return str(result["label"])
    config = result["config"]
    name: str = config["adapter"]
    overrides = ", ".join(_flat(config.get("adapter_config") or {}))
    if len(overrides) > width:
        overrides = overrides[: width - 1] + "…"
    return f"{name} ({overrides})" if overrides else name
