"""Finished run folders built from records, with the library's own writers (no training): report fixtures."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from finfed.config import load_config
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.guarantee import guarantee_text
from finfed.runs.outputs import RunOutputs

NOISE, SAMPLE_RATE, STEPS_PER_ROUND, DELTA = 1.1, 0.05, 20, 1e-5


def _epsilon_after(rounds: int) -> float:
    accountant = SiteAccountant("prv")
    accountant.record(NOISE, SAMPLE_RATE, STEPS_PER_ROUND * rounds)
    return accountant.epsilon(DELTA)


def _site(trained: int, names: dict[str, str], site_id: str) -> dict[str, Any]:
    site = {"target_epsilon": 8.0, "delta": DELTA, "noise_multiplier": NOISE, "max_grad_norm": 1.0,
            "sample_rate": SAMPLE_RATE, "records": 600, "accountant": "prv", "steps": STEPS_PER_ROUND * trained,
            "epsilon_by_round": {str(r): _epsilon_after(r) for r in range(1, trained + 1)},
            "epsilon": _epsilon_after(trained)}
    return {**site, "site-name": names[site_id]} if site_id in names else site


def _evaluation(server_round: int) -> list[dict[str, Any]]:
    """What the two sites report after evaluating the global model on their validation splits: site 1 is served
    worse, most of all on label 2 (`positive`); both shared their label shares (the model leans to `neutral`, the
    less the more rounds it trained: round 1's gaps are twice round 3's)."""
    lean = 1 + (3 - server_round) / 2
    return [{"site": 0, "num-examples": 60, "eval-accuracy": 0.7, "eval-macro-f1": 0.65, "eval-loss": 0.8,
             "eval-recall-0": 0.8, "eval-recall-1": 0.7, "eval-recall-2": 0.6,
             "eval-share-gap-0": -0.05 * lean, "eval-share-gap-1": 0.1 * lean, "eval-share-gap-2": -0.05 * lean},
            {"site": 1, "num-examples": 40, "eval-accuracy": 0.5, "eval-macro-f1": 0.45, "eval-loss": 1.1,
             "eval-recall-0": 0.75, "eval-recall-1": 0.55, "eval-recall-2": 0.2,
             "eval-share-gap-0": -0.1 * lean, "eval-share-gap-1": 0.25 * lean, "eval-share-gap-2": -0.15 * lean}]


def finished_run(root: Path, *, name: str = "report-check", refused_from: int | None = None,
                 names: dict[str, str] | None = None, budget: float = 8.0, settings: tuple[str, ...] = ()) -> Path:
    """A two-site, three-round DP run; with ``refused_from``, every site refused that round (budget reached)."""
    rounds = 3
    config = load_config(None, [f"name={name}", f"output_dir={root}", "federation.num_sites=2",
                                f"federation.rounds={rounds}", f"privacy.site_budget_epsilon={budget}", *settings])
    outputs = RunOutputs(config)
    outputs.start()
    trained = rounds if refused_from is None else refused_from - 1
    for r in range(rounds + 1 if refused_from is None else refused_from + 1):
        sites = [{"site": s, **({"site-name": names[str(s)]} if str(s) in (names or {}) else {}),
                  "epsilon": _epsilon_after(r), "delta": DELTA} for s in (0, 1)] if 0 < r <= trained else []
        outputs.append_round({"round": r, "central": {"accuracy": 0.4 + 0.1 * min(r, trained),
                                                      "macro_f1": 0.3 + 0.1 * min(r, trained), "loss": 1 - 0.1 * r},
                              "sites": sites, "failures": [], "refusals": [0, 1] if r == refused_from else [],
                              "evaluation": _evaluation(r) if 0 < r <= trained else []})
    sites = {sid: _site(trained, names or {}, sid) if trained else {} for sid in ("0", "1")}
    if refused_from is not None:  # what finfed.coordinator.run records for a site that refused
        for site in sites.values():
            site["refused_rounds"] = [refused_from]
    privacy = {"dp_enabled": True, "unit": "record", "run_delta": DELTA, "reproducible_dp": False,
               "dp_randomness": "secret (os.urandom)", "non_private_statistics": {}, "client_level": None,
               "sites": sites}
    privacy["guarantee"] = guarantee_text(privacy)
    outputs.write_privacy(privacy)
    state = "complete" if refused_from is None else "budget-exhausted"
    outputs.set_status(state, rounds=rounds, trained_rounds=trained, model_round=trained or None,
                       budget_exhausted_at_round=refused_from, baseline={"accuracy": 0.38, "macro_f1": 0.18},
                       baseline_description="the majority class", labels=["negative", "neutral", "positive"],
                       membership_audit={"site": 0, "attack": "loss-threshold", "auc": 0.52, "members": 100,
                                         "non_members": 100})
    return outputs.run_dir


class _VisibleText(HTMLParser):
    """The text a reader sees: everything outside <script>, <style> and <head>."""

    HIDDEN = {"script", "style", "head"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.hidden += tag in self.HIDDEN

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in self.HIDDEN

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def page_text(page: str) -> str:
    parser = _VisibleText()
    parser.feed(page)
    return "".join(parser.parts)


def plot_data(page: str, plot_id: str) -> dict:
    """The figures a plot draws, as the page carries them beside the image."""
    found = re.search(rf'<script type="application/json" id="{plot_id}-data">(.*?)</script>', page, re.DOTALL)
    assert found, f"no data for plot {plot_id}"
    return json.loads(found.group(1))
