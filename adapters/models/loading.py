"""Safe checkpoint loading with errors that say what is wrong and how to fix it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor, nn

from adapters.errors import CheckpointError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_PREFIXES = ("module.", "model.")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors from a ``.safetensors`` file or a torch checkpoint (``weights_only=True``).

    Accepts a bare state dict or one nested under ``state_dict``/``model``/..., and strips the
    ``module.`` prefix that DataParallel checkpoints (RobustBench's among them) carry.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path))
        except Exception as exc:  # the library raises several types for corrupt files
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{path}: cannot be read as a weights-only torch checkpoint ({exc}); pickled modules "
                "are refused for safety, save model.state_dict() instead"
            ) from exc
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors")
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def load_into(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Strict load that lists missing, unexpected and mis-shaped parameters."""
    expected = module.state_dict()
    # BatchNorm's num_batches_tracked is absent from some public checkpoints and unused here.
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:5])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:5])})")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} with the wrong shape (e.g. {'; '.join(mis_shaped[:3])})")
    if problems:
        raise CheckpointError(
            f"{source} does not match the architecture {type(module).__name__}: "
            + "; ".join(problems)
            + ". Check the architecture name and its arguments (e.g. num_classes)."
        )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
