"""The ``manifest.json`` a built data set carries: how it was built and, for CIFAR-10-C, which chunks are done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.data.cifar10 import DatasetError

MANIFEST = "manifest.json"


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest under ``directory``, or None when there is none; a damaged one is a DatasetError naming it."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} cannot be read ({exc}); rebuild the data set or remove the file") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path} is not a JSON object; rebuild the data set or remove the file")
    return manifest
