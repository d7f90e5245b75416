"""A stream's collapse guard: when the label-free signals say adaptation hurts, act on it.

Triggers, checked each time a signal window closes (see :mod:`adapters.signal_windows`):

* ``thresholds``: a closed window's signal below or above a limit (an ``early`` threshold is also
  checked on the window in progress after each of its steps, from its third, so that its action
  starts a step or two sooner);
* ``max_drop``: a signal falling by more than a limit between two consecutive closed windows
  (error accumulation: the estimate keeps sinking);
* ``non_finite``: a step that produced NaN/inf (the step is undone first, then the policy acts);
* ``reset_every_steps``: periodically, whatever the signals say (RDumb's baseline).

Policies (the guard's, or a threshold's own): ``reset`` (back to the source), ``rollback`` (to
the last state whose window fired no trigger; the source if there is none yet), ``pause`` (predict without adapting for
``pause_steps`` steps) or ``fallback`` (answer with the frozen source model and stop adapting
while the triggers fire: the adapter keeps predicting in the shadow, its signals are still
windowed, and ``resume_after_windows`` consecutive windows that fire nothing resume adaptation
(more than one: a stream that is label-correlated on the whole but has a quiet window now and
then stays on the source); for data where the method
itself is worse than no adaptation, e.g. test-batch statistics on label-correlated batches,
which no reset can fix). The periodic trigger always resets. After an action the window in progress
is discarded, so the next decision looks only at images seen after it. Every decision is counted
by reason and kept (the last ``keep_decisions``) as a record; counts, records, the pause and the
last good state are tensors of the stream's state, so they survive snapshots and spills, and the
last good state counts in the stream's state bytes.

The server and ``tta-bench replay --guard`` run the same :class:`adapters.online.OnlineStream`
with this guard, so the same images give the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from adapters.blocks.signals import SIGNALS, ratios
from adapters.guard_config import ACTIONS, REASONS, GuardConfig, Policy, Threshold

PREFIX = "guard."
GOOD_PREFIX = "guard.good."


class Decision(NamedTuple):
    reason: str
    action: str
    signal: str | None = None
    value: float | None = None
    limit: float | None = None

    def report(self) -> dict[str, Any]:
        return {k: v for k, v in self._asdict().items() if v is not None}


# a decision record's tensor row: step, images, reason, action, signal, value, limit (NaN: none)
_ROW = 7


class Guard:
    """Decides; :class:`~adapters.online.OnlineStream` applies the decision to its adapter."""

    def __init__(self, config: GuardConfig | dict[str, Any] | None = None) -> None:
        self.config = config if isinstance(config, GuardConfig) else GuardConfig.model_validate(config or {})
        self.clear()

    def clear(self) -> None:
        self.counts = torch.zeros(len(REASONS), dtype=torch.int64)
        self.records = torch.zeros((0, _ROW), dtype=torch.float64)
        self.paused_steps_left = 0
        self.falling_back = False  # the fallback policy: answering with the source for now
        self.windows_since_action = 0
        self.quiet_windows = 0  # consecutive windows that fired nothing while falling back
        self.images = 0  # images the stream has seen (decision records say when)
        self.good: dict[str, Any] | None = None  # the adapter's last good state (rollback only)

    # -- deciding ---------------------------------------------------------------------------------
    def on_window(self, closed: Tensor) -> Decision | None:
        """A window just closed (``closed``: the closed windows' sums, oldest first)."""
        self.windows_since_action += 1
        fired = self._triggered(closed)
        if self.falling_back:
            if fired is not None and fired.action != "fallback":
                return fired  # e.g. a reset trigger still acts on the shadow model
            self.quiet_windows = 0 if fired is not None else self.quiet_windows + 1
            return Decision("recovered", "resume") if self.quiet_windows >= self.config.resume_after_windows else None
        return fired

    def on_open_window(self, values: dict[str, float]) -> Decision | None:
        """A step went into the window in progress (``values``: its signals so far); only the
        ``early`` thresholds are checked, and while falling back only those with another policy
        act (the quiet-window count is the closed windows' business)."""
        fired = self._crossed([rule for rule in self.config.thresholds if rule.early], values)
        if fired is not None and self.falling_back and fired.action == "fallback":
            return None
        return fired

    def _crossed(self, rules: Sequence[Threshold], values: dict[str, float]) -> Decision | None:
        for rule in rules:
            value = values.get(rule.signal)
            if value is None:
                continue
            if rule.below is not None and value < rule.below:
                return self._decide("threshold", rule.signal, value, rule.below, rule.policy)
            if rule.above is not None and value > rule.above:
                return self._decide("threshold", rule.signal, value, rule.above, rule.policy)
        return None

    def _triggered(self, closed: Tensor) -> Decision | None:
        values = ratios(closed[-1])
        fired = self._crossed(self.config.thresholds, values)
        if fired is not None:
            return fired
        if self.windows_since_action >= 2 and closed.shape[0] >= 2:
            before = ratios(closed[-2])
            for name, drop in self.config.max_drop.items():
                if name in values and name in before and before[name] - values[name] > drop:
                    return self._decide("trend", name, before[name] - values[name], drop)
        return None

    def on_step(self, adaptation_steps: int) -> Decision | None:
        every = self.config.reset_every_steps
        if every is not None and adaptation_steps >= every:
            return Decision("periodic", "reset", None, float(adaptation_steps), float(every))
        return None

    def on_non_finite(self) -> Decision | None:
        return self._decide("non_finite") if self.config.non_finite else None

    def _decide(
        self,
        reason: str,
        signal: str | None = None,
        value: float | None = None,
        limit: float | None = None,
        policy: Policy | None = None,
    ) -> Decision:
        return Decision(reason, policy or self.config.policy, signal, value, limit)

    @property
    def paused(self) -> bool:
        return self.paused_steps_left > 0

    @property
    def adapting(self) -> bool:
        return not self.paused and not self.falling_back

    def tick(self, images: int) -> None:
        """A step of ``images`` images went by (a paused stream counts down)."""
        self.images += images
        self.paused_steps_left = max(0, self.paused_steps_left - 1)

    def record(self, decision: Decision, step: int) -> None:
        """Count and keep ``decision``, taken at the adapter's step ``step``."""
        self.counts[REASONS.index(decision.reason)] += 1
        signal = float(SIGNALS.index(decision.signal)) if decision.signal else math.nan
        row = [step, self.images, REASONS.index(decision.reason), ACTIONS.index(decision.action), signal]
        row += [math.nan if v is None else v for v in (decision.value, decision.limit)]
        self.records = torch.cat([self.records, torch.tensor([row], dtype=torch.float64)])
        self.records = self.records[-self.config.keep_decisions :]
        self.windows_since_action = self.quiet_windows = 0
        if decision.action == "pause":
            self.paused_steps_left = self.config.pause_steps
        self.falling_back = decision.action == "fallback" or (self.falling_back and decision.action != "resume")

    # -- reporting and state ----------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        decisions = []
        for row in self.records.tolist():
            record: dict[str, Any] = {
                "step": int(row[0]),
                "images": int(row[1]),
                "reason": REASONS[int(row[2])],
                "action": ACTIONS[int(row[3])],
            }
            if not math.isnan(row[4]):
                record["signal"] = SIGNALS[int(row[4])]
            record.update({k: v for k, v in (("value", row[5]), ("limit", row[6])) if not math.isnan(v)})
            decisions.append(record)
        return {
            "config": self.config.model_dump(mode="json", exclude_none=True),
            "actions": dict(zip(REASONS, self.counts.tolist(), strict=True)),
            "images": self.images,
            "paused_steps_left": self.paused_steps_left,
            "falling_back": self.falling_back,
            "has_good_state": self.good is not None,
            "decisions": decisions,
        }

    def good_bytes(self) -> int:
        if self.good is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self.good["tensors"].values())

    def state_tensors(self) -> dict[str, Tensor]:
        meta = [self.paused_steps_left, self.windows_since_action, self.images, int(self.falling_back)]
        meta.append(self.quiet_windows)
        tensors_meta = torch.tensor(meta, dtype=torch.int64)
        tensors = {f"{PREFIX}counts": self.counts.clone(), f"{PREFIX}records": self.records.clone()}
        tensors[f"{PREFIX}meta"] = tensors_meta
        if self.good is not None:
            tensors.update({f"{GOOD_PREFIX}{k}": v for k, v in self.good["tensors"].items()})
            tensors[f"{PREFIX}good_generator"] = self.good["generator"]
            tensors[f"{PREFIX}good_steps"] = torch.tensor([self.good["steps"]], dtype=torch.int64)
        return tensors

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Pop the ``guard.*`` tensors from ``tensors`` (absent: a fresh guard); raises ValueError
        on a malformed layout without changing this guard."""
        mine = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith(PREFIX)]}
        if not mine:
            self.clear()
            return
        counts, records, meta = (mine.pop(f"{PREFIX}{k}", None) for k in ("counts", "records", "meta"))
        if counts is None or counts.shape != (len(REASONS),) or records is None or meta is None:
            raise ValueError("guard state is malformed (counts, records or meta missing or misshapen)")
        if records.dim() != 2 or records.shape[1] != _ROW or meta.shape not in ((4,), (5,)):
            raise ValueError(f"guard records have shape {tuple(records.shape)}, expected (K, {_ROW})")
        generator, steps = mine.pop(f"{PREFIX}good_generator", None), mine.pop(f"{PREFIX}good_steps", None)
        good_tensors = {k[len(GOOD_PREFIX) :]: v for k, v in mine.items() if k.startswith(GOOD_PREFIX)}
        if len(good_tensors) != len(mine) or (good_tensors and (generator is None or steps is None)):
            raise ValueError(f"guard state has unexpected tensors {sorted(set(mine) - set(good_tensors))[:3]}")
        self.counts, self.records = counts.long().clone(), records.double().clone()
        values = [int(v) for v in meta.tolist()] + [0]  # a 4-value meta predates quiet_windows
        self.paused_steps_left, self.windows_since_action, self.images, falling_back, self.quiet_windows = values[:5]
        self.falling_back = bool(falling_back)
        self.good = (
            {"tensors": good_tensors, "generator": generator, "steps": int(steps.item())}
            if good_tensors and generator is not None and steps is not None
            else None
        )
