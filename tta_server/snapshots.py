"""Stream snapshots on disk: ``<dir>/<stream id>.safetensors``, written atomically.

A snapshot holds the adapter's per-stream tensors plus, in the safetensors metadata, the format,
adapter, model id, config (and its hash), step count and random-generator state. It is written to
a temporary file, fsynced and renamed, so a crash leaves either the old or the new snapshot.
A snapshot of another model or config is refused on restore, never silently loaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from adapters import Adapter, AdapterError


class SnapshotError(RuntimeError):
    """A snapshot is missing, unreadable or for another model/config."""


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def snapshot_path(directory: Path, stream_id: str) -> Path:
    return directory / f"{stream_id}.safetensors"


def write_snapshot(directory: Path, stream_id: str, adapter: Adapter) -> Path:
    from safetensors.torch import save_file

    state = adapter.state_dict()
    metadata = {
        "format": str(state["format"]),
        "stream_id": stream_id,
        "adapter": state["adapter"],
        "model_id": state["model_id"],
        "config": json.dumps(state["config"], sort_keys=True),
        "config_hash": config_hash(state["config"]),
        "steps": str(state["steps"]),
        "generator": base64.b64encode(state["generator"].numpy().tobytes()).decode(),
    }
    directory.mkdir(parents=True, exist_ok=True)
    target = snapshot_path(directory, stream_id)
    partial = target.with_name(f".{target.name}.partial")
    tensors = {k: v.contiguous().cpu() for k, v in state["tensors"].items()}
    save_file(tensors, str(partial), metadata=metadata)
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    partial.replace(target)
    return target


def read_snapshot(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # a truncated or foreign file
        raise SnapshotError(f"{path.name}: unreadable snapshot ({exc})") from exc
    return metadata, tensors


def restore_into(adapter: Adapter, metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    generator = torch.frombuffer(bytearray(base64.b64decode(metadata["generator"])), dtype=torch.uint8)
    state = {
        "format": int(metadata["format"]),
        "adapter": metadata["adapter"],
        "model_id": metadata["model_id"],
        "config": json.loads(metadata["config"]),
        "steps": int(metadata["steps"]),
        "generator": generator,
        "tensors": tensors,
    }
    try:
        adapter.load_state_dict(state)
    except (AdapterError, ValueError, KeyError) as exc:
        raise SnapshotError(f"snapshot of stream {metadata.get('stream_id')!r} does not fit: {exc}") from exc
