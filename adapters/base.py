"""The adapter interface (the registry of adapters by name: :mod:`adapters.adapter_registry`).

An adapter wraps a shared, frozen :class:`SourceModel` for ONE stream and keeps only what
differs from the source (moved parameters, optimizer state, EMA copies). Lifecycle::

    adapter = create_adapter("tent", source, {"optimizer": {"lr": 5e-4}})
    logits = adapter.forward_and_adapt(batch)   # prediction for batch, then one update
    snapshot = adapter.state_dict()             # per-stream tensors only
    adapter.reset()                             # back to the source

Subclasses implement ``_setup`` (build per-stream state from the source), ``_forward_and_adapt``,
optionally ``_predict``, and list their per-stream tensors in ``_state_tensors``; everything else
(validation, step counting, snapshot format, exact ``state_bytes``, reset) lives here once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from adapters.artefacts import ArtefactStore
from adapters.blocks.losses import entropy
from adapters.blocks.prototypes import FeatureCapture
from adapters.blocks.state import load_role_tensors, role_tensors
from adapters.errors import AdapterError, InputError
from adapters.precision import Precision, Resolved, compute_precision, resolve_precision
from adapters.source_model import NormalizedModel, SourceModel

STATE_FORMAT = 1


class AdapterConfig(BaseModel):
    """Common settings; each adapter extends this with its paper's hyper-parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    seed: int = Field(0, description="seed of the adapter's own random generator")
    precision: Precision = Field(
        "auto",
        description="compute precision of each step: fp32 (exact), bf16 (autocast; parameters, state and "
        "logits stay fp32), auto = the measured fastest for this adapter on this device (bf16 on CPUs with "
        "AVX-512 BF16 or AMX, fp32 elsewhere)",
    )


class Adapter(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[AdapterConfig]] = AdapterConfig
    required_artefacts: ClassVar[tuple[str, ...]] = ()
    needs_trainable_source: ClassVar[bool] = True
    paper: ClassVar[str] = ""
    # what ``precision="auto"`` picks per device type, where that device computes bf16 natively;
    # measured by ``tta-bench adapter-speed`` (CUDA unmeasured: fp32 until it is)
    preferred_precision: ClassVar[dict[str, Resolved]] = {"cpu": "bf16"}

    def __init__(self, source: SourceModel, config: AdapterConfig | dict[str, Any] | None = None) -> None:
        self.source = source
        self.config = self.parse_config(config)
        if self.needs_trainable_source and not source.trainable:
            raise AdapterError(
                f"adapter {self.name!r} needs an eager torch module but model {source.model_id} is "
                "inference-only (a TorchScript graph, or ONNX without a converter); use the 'source' adapter "
                "or load the eager checkpoint"
            )
        store = ArtefactStore(source)
        needed = self.artefacts_for(self.config)
        store.require(needed, f"adapter {self.name!r}")
        self.artefacts = {name: store.load(name) for name in needed}
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.device = next(iter(source.module.parameters()), torch.empty(0)).device
        self.precision = resolve_precision(self.config.precision, self.device, self.preferred_precision)
        self.steps = 0
        self._last: dict[str, float] = {}
        self.feature_capture: FeatureCapture | None = None
        self._setup()
        self._capture_features()

    @classmethod
    def artefacts_for(cls, config: AdapterConfig) -> tuple[str, ...]:
        """The source artefacts this configuration needs (default: ``required_artefacts``)."""
        return cls.required_artefacts

    @classmethod
    def parse_config(cls, config: AdapterConfig | dict[str, Any] | None) -> AdapterConfig:
        if isinstance(config, cls.Config):
            return config
        if isinstance(config, AdapterConfig):
            raise AdapterError(f"adapter {cls.name!r} takes {cls.Config.__name__}, got {type(config).__name__}")
        try:
            return cls.Config.model_validate(config or {})
        except ValidationError as exc:
            raise AdapterError(f"invalid config for adapter {cls.name!r}: {exc}") from exc

    # -- what subclasses implement -------------------------------------------------------------
    @abstractmethod
    def _setup(self) -> None:
        """Build the per-stream state from the source (also called by ``reset``)."""

    @abstractmethod
    def _forward_and_adapt(self, x: Tensor) -> Tensor:
        """Logits for ``x`` as the paper returns them (pre-update), then one update."""

    def _predict(self, x: Tensor) -> Tensor:
        """Logits for ``x`` from the current state, without updating it."""
        raise NotImplementedError

    def _state_tensors(self) -> dict[str, Tensor]:
        """Every per-stream tensor, by a stable name (shared frozen parts excluded)."""
        return {}

    def _load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if tensors:
            raise AdapterError(f"adapter {self.name!r} has no per-stream tensors, got {sorted(tensors)[:3]}")

    def _diagnostics(self) -> dict[str, float]:
        return {}

    def _feature_network(self) -> nn.Module | None:
        """The network whose classifier input is this adapter's feature space, run once on the clean
        batch per step (None: the prototype distance is not measured)."""
        return None

    def _capture_features(self) -> None:
        if self.feature_capture is not None:
            self.feature_capture.remove()
        network = self._feature_network()
        usable = isinstance(network, NormalizedModel) and network.has_features
        self.feature_capture = FeatureCapture(network.classifier) if usable else None  # type: ignore[union-attr,arg-type]

    def captured_features(self) -> tuple[Tensor, Tensor] | None:
        """(penultimate features, logits) of the feature network's last forward, taken once."""
        return self.feature_capture.take() if self.feature_capture is not None else None

    def _parameter_pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        """The adapted parameters and the tensors they started from, which a reset restores: the
        source's, or an adapter's own start such as a warm-up (none: not measured)."""
        return [], []

    def parameter_distance(self) -> float | None:
        """Relative L2 distance of the adapted parameters from where they started: ||theta - theta_0||
        / ||theta_0|| (drift of the model itself; None where nothing is trained or the start is zero)."""
        adapted, source = self._parameter_pairs()
        if not adapted:
            return None
        with torch.no_grad():  # one fused pass per list, one host sync
            moved = torch.stack(torch._foreach_norm(torch._foreach_sub(adapted, source))).square().sum()
            size = torch.stack(torch._foreach_norm(source)).square().sum()
        return float((moved / size).sqrt()) if float(size) > 0 else None

    # -- the public interface ------------------------------------------------------------------
    def forward_and_adapt(self, x: Tensor) -> Tensor:
        """Predict ``x`` (N, 3, H, W) in [0, 1], then adapt on it; returns detached logits.

        Works inside ``torch.no_grad()`` and ``torch.inference_mode()`` too (serving code often
        wraps inference in them): like the papers' own code, the step re-enables gradients."""
        self.validate(x)
        with torch.inference_mode(False), torch.enable_grad():
            if x.is_inference():  # an inference tensor cannot be saved for backward: copy it out
                x = x.clone()
            with compute_precision(self.device, self.precision):
                logits = self._forward_and_adapt(x).detach().float()
            optimizer = getattr(self, "optimizer", None)
            if isinstance(optimizer, torch.optim.Optimizer):
                # every step rebuilds them: kept between steps they would be one more copy of the
                # trained parameters per stream, outside its counted state (12 MiB per CoTTA stream)
                optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        self._record(logits)
        return logits

    def predict(self, x: Tensor) -> Tensor:
        """Predict without changing any state (for batches too small to adapt on)."""
        self.validate(x)
        with torch.no_grad(), compute_precision(self.device, self.precision):
            logits = self._predict(x).detach().float()
        self._record(logits)
        return logits

    def reset(self) -> None:
        """Back to the source: state, optimizer, random generator and step count."""
        self.generator.manual_seed(self.config.seed)
        self.steps = 0
        self._last = {}
        self._setup()
        self._capture_features()

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "adapter": self.name,
            "model_id": self.source.model_id,
            "config": self.config.model_dump(mode="json"),
            "steps": self.steps,
            "generator": self.generator.get_state(),
            "tensors": {k: v.detach().clone() for k, v in self._state_tensors().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, expected in (("adapter", self.name), ("model_id", self.source.model_id)):
            if state.get(key) != expected:
                raise AdapterError(f"state is for {key} {state.get(key)!r}, this adapter has {expected!r}")
        try:  # through the Config, so a snapshot from before a new defaulted field still loads
            saved = self.parse_config(state.get("config")).model_dump(mode="json")
        except AdapterError:
            saved = None
        if saved != self.config.model_dump(mode="json"):
            raise AdapterError(f"state was saved with another {self.name!r} config; create the adapter with it first")
        self._load_state_tensors(state["tensors"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])

    def state_bytes(self) -> int:
        """Bytes of this stream's own tensors (the shared frozen model is not counted)."""
        return sum(t.numel() * t.element_size() for t in self._state_tensors().values())

    def state_is_finite(self) -> bool:
        """Whether every floating per-stream tensor is finite (a diverged step makes them NaN/inf)."""
        return all(bool(torch.isfinite(t).all()) for t in self._state_tensors().values() if t.is_floating_point())

    def diagnostics(self) -> dict[str, float]:
        """Signals of the last batch: mean entropy and confidence, plus the method's own (finite
        numbers only: a signal not computed yet is absent, never null or NaN)."""
        signals = {**self._last, **self._diagnostics()}
        return {k: float(v) for k, v in signals.items() if isinstance(v, int | float) and math.isfinite(v)}

    def validate(self, x: Any) -> None:
        expected = self.source.input_shape
        if not isinstance(x, Tensor):
            raise InputError(f"expected a torch.Tensor batch, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputError(
                f"expected a float tensor with values in [0, 1], got dtype {x.dtype} (divide uint8 by 255)"
            )
        if x.dim() != 4 or tuple(x.shape[1:]) != expected or x.shape[0] == 0:
            raise InputError(f"expected shape (N>=1, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise InputError("batch contains NaN or infinite values")
        low, high = float(x.min()), float(x.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise InputError(
                f"values must lie in [0, 1] (normalisation happens inside the model); got [{low:.3g}, {high:.3g}]"
            )

    def _record(self, logits: Tensor) -> None:
        probs = logits.float().softmax(1)
        self._last = {
            "mean_entropy": float(entropy(logits.float()).mean()),
            "mean_confidence": float(probs.amax(1).mean()),
        }


class RoleStateAdapter(Adapter):
    """An adapter whose per-stream state is lists of parameters by role (student, teacher, meta
    networks, ...) plus one optimizer, and whose diagnostics are the last step's ``_signals``."""

    optimizer: torch.optim.Optimizer
    _signals: dict[str, float]

    @abstractmethod
    def _roles(self) -> dict[str, list[Tensor]]:
        """The per-stream parameters by role, in a stable order."""

    def _state_tensors(self) -> dict[str, Tensor]:
        return role_tensors(self._roles(), self.optimizer)

    def _load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        load_role_tensors(self._roles(), self.optimizer, tensors, self.name)

    def _diagnostics(self) -> dict[str, float]:
        return dict(self._signals)
