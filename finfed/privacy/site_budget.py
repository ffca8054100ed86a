"""One site's privacy flow for a round: plan -> admit against its budget -> account each step -> commit.

    budget = SiteBudget.open(policy, privacy, fingerprint=..., stored_state=...)  # prior spend
    plan = budget.admit(num_records=..., train=..., rounds=...)  # calibrate; BudgetExhausted if over
    train_locally(..., plan=plan, accountant=budget.accountant)   # Opacus' hook accounts each step
    spend = budget.commit(run_id=..., server_round=..., steps=...)  # check, then the ledger
    context.state[...] = budget.state()                             # the run's history, for the next round

The site decides its budget (``SitePolicy``), never the server: whatever epsilon or noise the run
configuration asks for, admission projects the noise that would actually be applied. Prior spend is
the site's ledger (every run on the dataset) where it keeps one, else this run's ``Context.state``.
Everything here takes plain values, so the flow can be tested without a model or Flower.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from finfed import constants as keys
from finfed.config import PrivacySettings, TrainSettings
from finfed.errors import BudgetExhausted, ConfigError, PrivacyError
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.calibration import PrivacyPlan, plan_privacy
from finfed.privacy.ledger import PrivacyLedger, new_entry

# Floating-point tolerances against the budget: of the projection at admission, and of the spent epsilon
# at commit (an excess beyond it means the projection and the accountant disagree: a bug, not a refusal).
PROJECTION_SLACK = 1e-9
SPENT_SLACK = 1e-6


@dataclass(frozen=True)
class SitePolicy:
    """What the site decides, never the server: its lifetime budget and where its ledger lives."""

    budget_epsilon: float
    budget_delta: float
    ledger_path: str
    folder: str  # site-side files (site log, ledger chain head): never read by the coordinator
    dataset: str = ""  # the name its ledger composes spend under
    site_id: int = 0

    def __post_init__(self) -> None:
        if self.budget_epsilon <= 0 or not 0 < self.budget_delta < 1:
            raise ConfigError(f"site {self.site_id}: budget epsilon must be > 0 and delta in (0, 1), "
                              f"got epsilon={self.budget_epsilon}, delta={self.budget_delta}")


@dataclass(frozen=True)
class RoundSpend:
    """A committed round's privacy figures: epsilon always travels with its delta and accountant."""

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float

    def metrics(self) -> dict[str, float]:
        """The privacy fields of the site's reply (allow-listed in finfed/privacy/disclosure.py)."""
        return {keys.EPSILON: self.epsilon, keys.DELTA: self.delta, keys.NOISE_MULTIPLIER: self.noise_multiplier,
                keys.SAMPLE_RATE: self.sample_rate}


class SiteBudget:
    """A site's spend for one round; open it, admit the round, train with its accountant, commit."""

    def __init__(self, policy: SitePolicy, privacy: PrivacySettings, accountant: SiteAccountant,
                 ledger: PrivacyLedger | None, fingerprint: str) -> None:
        self.policy = policy
        self.privacy = privacy
        self.accountant = accountant  # train_locally hooks it to the DP optimizer: every step is accounted
        self.ledger = ledger
        self.fingerprint = fingerprint
        self.plan: PrivacyPlan | None = None  # set by admit()

    @classmethod
    def open(cls, policy: SitePolicy, privacy: PrivacySettings, *, fingerprint: str,
             stored_state: Mapping[str, Any] | None = None, resumed_at_round: int = 0,
             log: logging.Logger | None = None) -> "SiteBudget":
        """The site's prior spend: its ledger's (all runs on this dataset) if it keeps one, else this run's
        ``stored_state`` (Flower's ``Context.state``). ``log``: the site's own log (ledger warnings)."""
        mechanism = privacy.accountant
        if not policy.ledger_path:
            _require_known_history(policy, resumed_at_round, stored_state)
            return cls(policy, privacy, SiteAccountant.from_plain(stored_state, mechanism), None, fingerprint)
        ledger = PrivacyLedger(policy.ledger_path, head_dir=policy.folder, log=log)
        ledger.warn_if_changed(policy.dataset, fingerprint)
        return cls(policy, privacy, ledger.accountant(policy.dataset, mechanism), ledger, fingerprint)

    # ------------------------------------------------------------------ plan and admit
    def admit(self, *, num_records: int, train: TrainSettings, rounds: int) -> PrivacyPlan:
        """Calibrate the run's noise for this site's data, and refuse (BudgetExhausted) a round that would
        take the site past its own budget. The refusal's message stays at the site: its reply says only
        that it refused."""
        plan = plan_privacy(num_records=num_records, train=train, privacy=self.privacy, rounds=rounds,
                            site=f"site {self.policy.site_id}")
        policy = self.policy
        if plan.target_delta > policy.budget_delta:
            raise BudgetExhausted(f"site {policy.site_id}: the run asks for delta={plan.target_delta:g}, "
                                  f"above the site's delta budget {policy.budget_delta:g}")
        projected = self.accountant.projected_epsilon(self.delta, plan.noise_multiplier, plan.sample_rate,
                                                      plan.steps_per_round)
        if projected > policy.budget_epsilon + PROJECTION_SLACK:
            raise BudgetExhausted(f"site {policy.site_id}: this round would raise epsilon from "
                                  f"{self.accountant.epsilon(self.delta):.3f} to {projected:.3f}, above the "
                                  f"site's budget {policy.budget_epsilon:g}")
        self.plan = plan
        return plan

    def refusal(self, *, num_records: int, train: TrainSettings, rounds: int) -> str | None:
        """Why the site would refuse the next round for its budget, or None (the check :meth:`admit` makes)."""
        try:
            self.admit(num_records=num_records, train=train, rounds=rounds)
        except BudgetExhausted as refused:
            return str(refused)
        return None

    @property
    def delta(self) -> float:
        """Every epsilon of the site is computed at its own budget delta (the run's may be smaller)."""
        return self.policy.budget_delta

    # ------------------------------------------------------------------ commit
    def commit(self, *, run_id: str, server_round: int, steps: int) -> RoundSpend:
        """Record the admitted round's spend (the accountant stepped during training) in the ledger."""
        plan = self.plan
        if plan is None:
            raise PrivacyError("a round's spend was committed before the round was admitted")
        epsilon = self.accountant.epsilon(self.delta)
        if epsilon > self.policy.budget_epsilon + SPENT_SLACK:  # the projection and the accountant must agree
            raise PrivacyError(f"site {self.policy.site_id}: spent epsilon {epsilon:.4f} exceeds its budget")
        if self.ledger is not None:
            self.ledger.append(new_entry(
                run_id=run_id, server_round=server_round, fingerprint=self.fingerprint,
                accountant=self.privacy.accountant, noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate, steps=steps, max_grad_norm=plan.max_grad_norm, delta=self.delta,
                epsilon_after=epsilon, dataset=self.policy.dataset, budget_epsilon=self.policy.budget_epsilon))
        return RoundSpend(epsilon=epsilon, delta=self.delta, accountant=self.privacy.accountant,
                          noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)

    def state(self) -> dict[str, Any]:
        """The accountant's state for Flower's ``Context.state``: the next round continues from it."""
        return self.accountant.to_plain()


def _require_known_history(policy: SitePolicy, resumed_at_round: int, stored_state: Any) -> None:
    """A resumed run is a new Flower run with an empty ``Context.state``: without a ledger the site
    cannot know what it spent before the coordinator restarted, and would under-report epsilon."""
    if resumed_at_round > 0 and stored_state is None:
        message = (f"site {policy.site_id}: the run resumed after round {resumed_at_round}, and this site keeps "
                   f"no privacy ledger (node config `{keys.NODE_LEDGER_PATH}`), so its spend before the "
                   "restart is unknown; refusing rather than under-reporting epsilon")
        raise PrivacyError(message, public_reason=message)  # names a setting, nothing of the records
