"""What a sound snapshot file is: its name, format, checksum, recorded identity and finite values.

The checks live here once; :class:`tta_server.streams.store.SnapshotStore` applies them to a file it
reads whole (to load it) or tensor by tensor (to check it without loading it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adapters.source_model import state_sha256
from tta_server.streams.ids import validate_stream_id

SUFFIX = ".safetensors"
FILE_FORMAT = "tta-stream-snapshot/2"


def file_name(stream_id: str) -> str:
    return hashlib.sha256(stream_id.encode()).hexdigest()[:32] + SUFFIX


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """Which file is at ``path`` now (a rewrite is a rename: a new inode); None if there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def checksum(tensors: Mapping[str, Tensor], metadata: dict[str, str]) -> str:
    described = json.dumps({k: v for k, v in metadata.items() if k != "checksum"}, sort_keys=True)
    return hashlib.sha256(f"{state_sha256(tensors)}\n{described}".encode()).hexdigest()


def identity(path: Path, metadata: dict[str, str], expected_id: str | None) -> str:
    """The stream id a file of this format records, if it matches the file's name (and ``expected_id``)."""
    if metadata.get("file_format") != FILE_FORMAT:
        raise ValueError(f"not a snapshot of this format (file_format {metadata.get('file_format')!r})")
    stream_id = validate_stream_id(metadata.get("stream_id"))
    if path.name != file_name(stream_id) or (expected_id is not None and stream_id != expected_id):
        raise ValueError(f"the file belongs to stream {stream_id!r}, not to its name {path.name}")
    return stream_id


def check_content(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str], expected_id: str | None) -> str:
    """The file's stream id if its format, checksum, identity and values are sound; ValueError if not."""
    if metadata.get("file_format") != FILE_FORMAT:
        raise ValueError(f"not a snapshot of this format (file_format {metadata.get('file_format')!r})")
    if metadata.get("checksum") != checksum(tensors, metadata):
        raise ValueError("checksum mismatch: the file's bytes changed after it was written")
    stream_id = identity(path, metadata, expected_id)
    bad = [name for name in sorted(tensors) if _non_finite(tensors[name])]
    if bad:
        raise ValueError(f"non-finite values in {', '.join(bad[:3])}")
    return stream_id


def _non_finite(tensor: Tensor) -> bool:
    return tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())


class FileTensors(Mapping[str, Tensor]):
    """An open safetensors file's tensors, each read when it is looked up."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.names = handle, list(handle.keys())

    def __getitem__(self, name: str) -> Tensor:
        tensor: Tensor = self.handle.get_tensor(name)
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def load(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All of a file's tensors and its metadata; ValueError if it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from exc
    return tensors, metadata
