"""The collapse guard's configuration (a stream's ``guard``), validated where it enters: the server's
stream settings, a stream's create request and ``tta-bench replay --guard``. What each trigger and
policy does is in :mod:`adapters.guard`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adapters.blocks.signals import SIGNALS

Policy = Literal["reset", "rollback", "pause", "fallback"]
REASONS = ("threshold", "trend", "non_finite", "periodic", "recovered")
ACTIONS = ("reset", "rollback", "pause", "fallback", "resume")


def _known_signal(name: str) -> str:
    if name not in SIGNALS:
        raise ValueError(f"unknown signal {name!r}; known: {', '.join(SIGNALS)}")
    return name


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    signal: str = Field(description="a windowed signal, e.g. source_agreement or majority_share")
    below: float | None = Field(None, description="fire when the window's value is below this")
    above: float | None = Field(None, description="fire when the window's value is above this")
    policy: Policy | None = Field(None, description="this trigger's own policy (default: the guard's)")
    early: bool = Field(
        False,
        description="also check the window in progress after each of its steps (from its third): for a "
        "signal that is sound on a few steps, e.g. label_dependence, so a fallback starts sooner",
    )

    _signal = field_validator("signal")(_known_signal)

    @model_validator(mode="after")
    def _one_limit(self) -> Threshold:
        if self.below is None and self.above is None:
            raise ValueError(f"threshold on {self.signal!r} needs 'below' or 'above'")
        return self


class GuardConfig(BaseModel):
    """A stream's guard; the default has no trigger (a diverged step is only undone)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    policy: Policy = Field("reset", description="what a threshold, trend or non-finite trigger does")
    # bounded: a client's stream config must not make every window close cost unbounded work
    thresholds: tuple[Threshold, ...] = Field((), max_length=32, description="limits on a closed window's signals")
    max_drop: dict[str, float] = Field(
        default_factory=dict, max_length=32, description="signal -> largest allowed fall between consecutive windows"
    )
    non_finite: bool = Field(False, description="a diverged (non-finite, undone) step triggers the policy")
    reset_every_steps: int | None = Field(None, ge=1, description="reset after this many adaptation steps")
    pause_steps: int = Field(100, ge=1, description="steps without adaptation under the pause policy")
    resume_after_windows: int = Field(
        1, ge=1, le=64, description="fallback policy: consecutive windows firing nothing before adaptation resumes"
    )
    keep_decisions: int = Field(32, ge=1, le=1024, description="decision records kept")

    @field_validator("max_drop")
    @classmethod
    def _drops(cls, value: dict[str, float]) -> dict[str, float]:
        for name, drop in value.items():
            _known_signal(name)
            if not drop > 0:
                raise ValueError(f"max_drop[{name!r}] must be > 0, got {drop}")
        return value

    @property
    def active(self) -> bool:
        return bool(self.thresholds or self.max_drop or self.reset_every_steps or self.non_finite)

    @property
    def falls_back(self) -> bool:
        """Whether some trigger answers with the source (then the frozen forward is needed)."""
        return self.policy == "fallback" or any(rule.policy == "fallback" for rule in self.thresholds)

    @property
    def reads_signals(self) -> bool:
        """Whether a decision needs the source-compared signals (a periodic reset only counts steps)."""
        return bool(self.thresholds or self.max_drop or self.falls_back)

    @property
    def checks_early(self) -> bool:
        """Whether some threshold is checked on the window in progress too."""
        return any(rule.early for rule in self.thresholds)

    @property
    def keeps_good_state(self) -> bool:
        """Whether some trigger rolls back (then the last good state is kept)."""
        return self.policy == "rollback" or any(rule.policy == "rollback" for rule in self.thresholds)
