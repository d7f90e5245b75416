"""The byte layout of an adapter's state: flat tensors plus string metadata (safetensors-ready).

``encode_state`` turns :meth:`Adapter.state_dict` (or :meth:`OnlineStream.state_dict`) into
``(tensors, metadata)``; ``decode_state`` is its inverse and refuses malformed metadata with an
:class:`AdapterError` naming the field, so a damaged file is reported, never half-loaded.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor

from adapters.errors import AdapterError

GENERATOR_KEY = "__generator__"  # the random generator's state, stored as a uint8 tensor


def encode_state(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    tensors = {key: value.detach().contiguous().cpu() for key, value in state["tensors"].items()}
    if GENERATOR_KEY in tensors:
        raise AdapterError(f"per-stream tensor name {GENERATOR_KEY!r} is reserved")
    tensors[GENERATOR_KEY] = state["generator"].cpu()
    metadata = {
        "format": str(state["format"]),
        "adapter": str(state["adapter"]),
        "model_id": str(state["model_id"]),
        "config": json.dumps(state["config"], sort_keys=True),
        "steps": str(state["steps"]),
    }
    if "guard" in state:  # an OnlineStream's guard config
        metadata["guard"] = json.dumps(state["guard"], sort_keys=True)
    return tensors, metadata


def decode_header(metadata: dict[str, str]) -> dict[str, Any]:
    """The adapter, model, config, steps (and guard) a saved state's metadata records, checked."""
    try:
        header = {
            "format": int(metadata["format"]),
            "adapter": metadata["adapter"],
            "model_id": metadata["model_id"],
            "config": json.loads(metadata["config"]),
            "steps": int(metadata["steps"]),
        }
        if "guard" in metadata:
            header["guard"] = json.loads(metadata["guard"])
    except KeyError as exc:
        raise AdapterError(f"state metadata lacks {exc.args[0]!r}") from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise AdapterError(f"state metadata is malformed: {exc}") from None
    if not isinstance(header["config"], dict) or header["steps"] < 0 or not isinstance(header.get("guard", {}), dict):
        raise AdapterError("state metadata is malformed: config must be an object and steps >= 0")
    return header


def decode_state(tensors: dict[str, Tensor], metadata: dict[str, str]) -> dict[str, Any]:
    tensors = dict(tensors)
    generator = tensors.pop(GENERATOR_KEY, None)
    if generator is None or generator.dtype != torch.uint8 or generator.dim() != 1:
        raise AdapterError("state has no random-generator tensor")
    return {**decode_header(metadata), "generator": generator, "tensors": tensors}
