"""A site's privacy accountant whose history survives rounds (and restarts).

The history is Opacus' own: a list of (noise multiplier, sample rate, steps),
saved and restored only through the accountant's ``state_dict()`` /
``load_state_dict()``. Between rounds it lives in Flower's ``Context.state``,
so every reported epsilon is cumulative over the run, not the epsilon of one round.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping

from opacus.accountants import IAccountant, create_accountant

from finfed.errors import PrivacyError

# The form ``Context.state`` held before the state went through Opacus' state_dict: one flat list
# per history column. Still read (a site upgraded mid-run keeps its spend), never written.
LEGACY_KEYS = ("mechanism", "noise", "rate", "steps")


class SiteAccountant:
    """Thin wrapper over an Opacus accountant with plain-value state."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.accountant: IAccountant = create_accountant(mechanism)

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """A copy of Opacus' (noise multiplier, sample rate, steps) history."""
        return list(self.accountant.state_dict()["history"])

    @property
    def total_steps(self) -> int:
        return sum(int(steps) for _, _, steps in self.history)

    def epsilon(self, delta: float) -> float:
        history = self.history
        if not history:
            return 0.0
        return history_epsilon(self.mechanism, tuple(tuple(entry) for entry in history), float(delta))

    def projected_epsilon(self, delta: float, noise_multiplier: float, sample_rate: float,
                          steps: int) -> float:
        """Epsilon after ``steps`` more steps, without recording them."""
        probe = SiteAccountant.from_state_dict(self.state_dict(), self.mechanism)
        probe.record(noise_multiplier, sample_rate, steps)
        return probe.epsilon(delta)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Account ``steps`` Poisson-subsampled Gaussian steps (used when not hooked to an optimizer).

        Consecutive steps with the same noise and rate merge into one entry, as Opacus'
        own step hook does, so every path yields the same history and the same epsilon
        as the calibration that chose the noise.
        """
        state = self.state_dict()
        history = state["history"]
        if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
            history[-1] = (noise_multiplier, sample_rate, history[-1][2] + steps)
        else:
            history.append((noise_multiplier, sample_rate, steps))
        self.accountant.load_state_dict(state)

    # ------------------------------------------------------------------ saving and restoring
    def state_dict(self) -> dict[str, Any]:
        """Opacus' own state: ``{"history": [(noise, rate, steps), ...], "mechanism": ...}`` (a copy)."""
        return dict(self.accountant.state_dict())

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], mechanism: str) -> "SiteAccountant":
        """An accountant for ``mechanism`` holding Opacus state ``state``; another mechanism's is refused."""
        accountant = cls(mechanism)
        if state.get("mechanism") != mechanism:
            raise PrivacyError(f"stored accountant state is for {state.get('mechanism')!r}, but "
                               f"`privacy.accountant` is {mechanism!r}; keep one accountant per run")
        history = [_history_entry(entry) for entry in state["history"]]
        accountant.accountant.load_state_dict({"history": history, "mechanism": mechanism})
        return accountant

    def to_plain(self) -> dict[str, str]:
        """The state as flat values for Flower's ``Context.state`` (a ConfigRecord holds no nested
        lists): Opacus' state_dict, its history as JSON text."""
        state = self.state_dict()
        return {"mechanism": state["mechanism"],
                "history": json.dumps([[float(n), float(q), int(s)] for n, q, s in state["history"]])}

    @classmethod
    def from_plain(cls, state: Mapping[str, Any] | None, mechanism: str) -> "SiteAccountant":
        """Rebuild from :meth:`to_plain` (or the legacy column lists); incomplete or mismatched state is refused."""
        if not state:
            return cls(mechanism)
        if "history" in state:
            try:
                history = json.loads(state["history"])
            except (TypeError, ValueError) as exc:
                raise PrivacyError(f"stored accountant history is not readable ({exc}); refusing to restart "
                                   "from zero") from None
            return cls.from_state_dict({"mechanism": state.get("mechanism"), "history": history}, mechanism)
        return cls.from_state_dict(_legacy_state_dict(state), mechanism)


@functools.lru_cache(maxsize=256)
def history_epsilon(mechanism: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Epsilon of a (noise multiplier, sample rate, steps) history: a pure function of it, and seconds per PRV
    evaluation, so remembered (a round's projection before training and its spend after are the same history;
    so are a resumed site's; the calibration checks a shared noise value with it too)."""
    accountant = create_accountant(mechanism)
    accountant.load_state_dict({"history": list(history), "mechanism": mechanism})
    return float(accountant.get_epsilon(delta=delta))


def _history_entry(entry: Any) -> tuple[float, float, int]:
    try:
        noise, rate, steps = entry
        return float(noise), float(rate), int(steps)
    except (TypeError, ValueError):
        raise PrivacyError(f"stored accountant history holds {entry!r:.60}, not (noise, rate, steps); "
                           "refusing to restart from zero") from None


def _legacy_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """The legacy column lists as an Opacus state_dict."""
    missing = [key for key in LEGACY_KEYS if key not in state]
    if missing:
        raise PrivacyError(f"stored accountant state lacks {missing}; refusing to restart from zero")
    if len({len(state["noise"]), len(state["rate"]), len(state["steps"])}) != 1:
        raise PrivacyError("stored accountant state has history lists of different lengths")
    return {"mechanism": state["mechanism"], "history": list(zip(state["noise"], state["rate"], state["steps"]))}
