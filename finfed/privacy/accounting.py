"""A site's privacy accountant whose history survives rounds (and restarts).

The history is Opacus' own: a list of (noise multiplier, sample rate, steps).
It is stored as plain lists in Flower's ``Context.state``, so every reported
epsilon is cumulative over the run, not the epsilon of one round.
"""

from __future__ import annotations

from typing import Any, Mapping

from opacus.accountants import IAccountant, create_accountant

from finfed.errors import PrivacyError


class SiteAccountant:
    """Thin wrapper over an Opacus accountant with plain-value state."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.accountant: IAccountant = create_accountant(mechanism)

    @property
    def total_steps(self) -> int:
        return sum(int(steps) for _, _, steps in self.accountant.history)

    def epsilon(self, delta: float) -> float:
        if not self.accountant.history:
            return 0.0
        return float(self.accountant.get_epsilon(delta=delta))

    def projected_epsilon(self, delta: float, noise_multiplier: float, sample_rate: float,
                          steps: int) -> float:
        """Epsilon after ``steps`` more steps, without recording them."""
        probe = SiteAccountant(self.mechanism)
        probe.accountant.history = list(self.accountant.history)
        probe.record(noise_multiplier, sample_rate, steps)
        return probe.epsilon(delta)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Account ``steps`` Poisson-subsampled Gaussian steps (used when not hooked to an optimizer).

        Consecutive steps with the same noise and rate merge into one entry, as Opacus'
        own step hook does, so every path yields the same history and the same epsilon
        as the calibration that chose the noise.
        """
        history = self.accountant.history
        if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
            history[-1] = (noise_multiplier, sample_rate, history[-1][2] + steps)
        else:
            history.append((noise_multiplier, sample_rate, steps))

    def to_plain(self) -> dict[str, Any]:
        history = self.accountant.history
        return {"mechanism": self.mechanism,
                "noise": [float(h[0]) for h in history],
                "rate": [float(h[1]) for h in history],
                "steps": [int(h[2]) for h in history]}

    @classmethod
    def from_plain(cls, state: Mapping[str, Any] | None, mechanism: str) -> "SiteAccountant":
        """Rebuild from :meth:`to_plain`; incomplete or mismatched state is refused."""
        accountant = cls(mechanism)
        if not state:
            return accountant
        missing = [k for k in ("mechanism", "noise", "rate", "steps") if k not in state]
        if missing:
            raise PrivacyError(f"stored accountant state lacks {missing}; refusing to restart from zero")
        if state["mechanism"] != mechanism:
            raise PrivacyError(f"stored accountant state is for {state['mechanism']!r}, but "
                               f"`privacy.accountant` is {mechanism!r}; keep one accountant per run")
        lengths = {len(state["noise"]), len(state["rate"]), len(state["steps"])}
        if len(lengths) != 1:
            raise PrivacyError("stored accountant state has history lists of different lengths")
        accountant.accountant.history = [(float(n), float(q), int(s)) for n, q, s in
                                         zip(state["noise"], state["rate"], state["steps"])]
        return accountant
