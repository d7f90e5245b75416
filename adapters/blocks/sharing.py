"""Per-stream views of a frozen network that share its tensors instead of copying them."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

from torch import Tensor, nn

from adapters.errors import AdapterError


def shared_view(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` whose parameters and buffers ARE the original tensors.

    Module objects are new, so a view can change modes, swap submodules or replace a
    parameter with its own per-stream copy without touching the shared network. Costs no
    tensor memory.
    """
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    try:
        return copy.deepcopy(module, memo)
    except Exception as exc:  # e.g. TorchScript modules cannot be deep-copied
        raise AdapterError(
            f"{type(module).__name__} cannot be viewed per stream ({exc}); use the 'source' adapter "
            "or load the model from an eager checkpoint"
        ) from exc


def replace_modules(
    view: nn.Module, predicate: Callable[[nn.Module], bool], factory: Callable[[nn.Module], nn.Module]
) -> list[nn.Module]:
    """Swap every submodule of ``view`` matching ``predicate`` for ``factory(old)``; returns the new ones."""
    replaced = []
    for parent in list(view.modules()):
        for child_name, child in list(parent.named_children()):
            if predicate(child):
                new = factory(child)
                setattr(parent, child_name, new)
                replaced.append(new)
    return replaced


def own_parameters(
    view: nn.Module, select: Callable[[nn.Module, str], bool] = lambda module, name: True
) -> tuple[list[nn.Parameter], list[Tensor]]:
    """Give ``view`` its own trainable copy of each selected parameter.

    Returns (the per-stream copies, the shared source tensors they started from), in the same
    order, so restores and resets can read the source values without storing a snapshot.
    """
    copies: list[nn.Parameter] = []
    originals: list[Tensor] = []
    for module in view.modules():
        for name, param in list(module._parameters.items()):
            if param is None or not select(module, name):
                continue
            copy_ = nn.Parameter(param.detach().clone())
            module._parameters[name] = copy_
            copies.append(copy_)
            originals.append(param.detach())
    return copies, originals
