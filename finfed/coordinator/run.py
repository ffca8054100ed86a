"""The coordinator's side of a run, free of Flower types.

``server/app.py`` feeds it what the strategy sees; it evaluates the global model
centrally, keeps per-site records, and writes the run directory.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import numpy as np

from finfed import constants as keys
from finfed.config import ExperimentConfig
from finfed.data.partition import load_federated_data, simulated_site
from finfed.errors import RunError
from finfed.models.adapters import (
    count_parameters,
    exchanged_state,
    fixed_tensors,
    frozen_adapter_fingerprint,
    load_exchanged_state,
)
from finfed.models.backbone import load_tokenizer, quiet_transformers
from finfed.models.devices import device_name, model_device
from finfed.privacy.client_level import (
    ACCOUNTANT,
    client_level_epsilon,
    default_count_stddev,
)
from finfed.privacy.guarantee import guarantee_text
from finfed.privacy.membership_audit import (
    AUDITED_SITE,
    audit_holdout_fraction,
    ceiling_for,
    loss_threshold_auc,
)
from finfed.privacy.randomness import (
    randomness_record,
    warn_if_reproducible,
)
from finfed.reporting.render import write_reports
from finfed.runs.model_store import save_model
from finfed.runs.outputs import MODEL, RunOutputs
from finfed.runs.warm_start import warm_start
from finfed.tasks import federation_labels, get_task
from finfed.wire import clean_site_name

logger = logging.getLogger(__name__)


def compute_record(config: ExperimentConfig, model) -> dict[str, str]:
    """Where the coordinator's model runs, and the sites' training arithmetic, as resolved at start."""
    device = device_name(model_device(model))
    return {"model.device": f"{device} (setting: {config.model.device})", "train.precision": config.train.precision,
            "sites": "simulated sites: the same setting, resolved on their machine" if not config.federation.site_nodes
            else "deployed sites: each its own site.toml [site] device"}


class FederatedRun:
    """State of one federated run on the coordinator."""

    def __init__(self, config: ExperimentConfig) -> None:
        quiet_transformers()
        self.config = config
        self.labels = federation_labels(config)
        self.task = get_task(config, self.labels)
        self.model = self.task.build_model()
        # A warm start replaces the trained tensors before anything is fingerprinted or sent.
        self.warm_start = warm_start(self.model, config, self.labels) if config.model.init_from else None
        self.fingerprint = frozen_adapter_fingerprint(self.model)
        self.outputs = RunOutputs(config)
        self.test_examples = self._central_test_examples()
        self.site_train: dict[int, list[dict[str, Any]]] = {}
        self.site_eval: dict[int, list[dict[str, Any]]] = {}
        self.failures: dict[int, list[str]] = {}
        self.refusals: dict[int, list[int]] = {}
        self.rejections: dict[int, list[dict[str, Any]]] = {}  # updates that failed validation: site, reason
        self.resumed_from: list[int] = []  # rounds of the checkpoints this run was resumed from
        self.exhausted = False
        self.exhausted_round: int | None = None
        self.client_level_rounds: list[int] = []  # rounds whose client-level DP release was applied
        self.history: list[dict[str, Any]] = []
        self.site_names: dict[int, str] = {}  # site id -> the name its replies carried (finfed.wire)
        self._names_shown: dict[int, str] = {}

    def _central_test(self):
        return load_federated_data(self.config.data, self.config.federation.num_sites, self.task.records).test

    def _central_test_examples(self) -> list[dict]:
        return self.task.encode_for_evaluation(self._central_test(), load_tokenizer(self.config.model.backbone))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.outputs.compute = compute_record(self.config, self.model)
        self.outputs.start()
        trainable, total = count_parameters(self.model)
        logger.info(f"run {self.config.name}: {self.config.federation.num_sites} sites, "
                    f"{self.config.federation.rounds} rounds, {trainable:,} of {total:,} parameters trained "
                    f"({self.config.lora.method}), DP {'on' if self.config.privacy.enabled else 'off'}")
        if self.config.privacy.enabled and self.config.privacy.reproducible:
            warn_if_reproducible(True, f"run {self.config.name}")  # a warning on the console, once

    def client_level_summary(self) -> dict[str, Any] | None:
        """What the client-level guarantee covers, with every parameter its epsilon is computed from."""
        settings, federation = self.config.client_dp, self.config.federation
        if settings.mode == "off":
            return None
        rate, rounds = federation.fraction_train, len(self.client_level_rounds)
        expected = rate * federation.num_sites
        adaptive = settings.mode == "adaptive"
        return {"mode": f"{settings.mode} clipping", "unit": "site",
                "mechanism": ("Gaussian on the sum of clipped site updates, divided by the expected number of "
                              "sampled sites (DP-FedAvg, fixed denominator)"
                              + ("; the clipping norm adapts from a noisy count of unclipped updates, "
                                 "covered by the same noise multiplier" if adaptive else "")),
                "sampling": f"Poisson: each of the {federation.num_sites} configured sites independently with "
                            f"probability {rate:g} per round; a sampled site that is offline, fails or refuses "
                            "contributes nothing",
                "weighting": f"unweighted: each sampled site's clipped update counts once, divided by "
                             f"{expected:g} (not by example counts)",
                "noise_multiplier": settings.noise_multiplier,
                "clipping_norm": settings.clipping_norm,
                "count_stddev": (settings.count_stddev or default_count_stddev(settings.noise_multiplier, expected))
                if adaptive else None,
                "num_sites": federation.num_sites, "sample_rate": rate, "expected_sites_per_round": expected,
                "rounds": rounds, "delta": settings.delta, "accountant": ACCOUNTANT,
                "epsilon": client_level_epsilon(noise_multiplier=settings.noise_multiplier, sample_rate=rate,
                                                rounds=rounds, delta=settings.delta),
                "guarantee": ("client-level (epsilon, delta)-DP under adding or removing one site: bounds what "
                              "the released global models reveal about whether any one site took part; the "
                              "coordinator, which sees each site's update, is trusted; separate from each "
                              "site's record-level guarantee")}

    def record_client_level_release(self, server_round: int) -> None:
        if server_round not in self.client_level_rounds:
            self.client_level_rounds.append(server_round)

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return {name: tensor.numpy() for name, tensor in exchanged_state(self.model).items()}

    def keep_fixed(self, aggregated: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray]
                   ) -> dict[str, np.ndarray]:
        """The aggregate, with the fixed tensors (``lora.method: head``) as they were: no site trains them, so
        neither a site's reply nor the aggregation (SecAgg+'s quantisation, client-level noise) may move them."""
        return {**aggregated, **{name: previous[name] for name in fixed_tensors(self.model) if name in previous}}

    def train_config(self) -> dict[str, Any]:
        return {keys.TOTAL_ROUNDS: self.config.federation.rounds, keys.FROZEN_FINGERPRINT: self.fingerprint}

    # ------------------------------------------------------------------ per round
    def record_training(self, server_round: int, metrics: list[Mapping[str, Any]], errors: list[str],
                        refusals: list[Mapping[str, Any]] = (), offline: list[str] = (),
                        rejected: list[Mapping[str, Any]] = (), rejections: list[Mapping[str, Any]] = ()) -> None:
        """Keep each site's reply; fail on errors, but not on sites refusing to overspend.

        ``errors``: sites asked that sent no update (error reply or silence); ``offline``: sites
        seen earlier that were not connected, hence not asked. Both are recorded for the round.
        ``rejected``: metrics of sites whose update failed validation (kept: they spent privacy budget),
        ``rejections``: what is recorded of them (site, reason category). The round goes on without them.
        """
        self.site_train[server_round] = self._named(metrics) + self._named(
            [m for m in rejected if all(isinstance(m.get(k), (int, float))
                                        for k in (keys.SITE_ID, keys.NUM_EXAMPLES, keys.STEPS))])
        self._named(refusals)
        if rejections:
            self.rejections[server_round] = [dict(r) for r in rejections]
        if errors or offline:
            self.failures[server_round] = [*errors, *offline]
            logger.info(f"round {server_round}: {len(errors) + len(offline)} site(s) sent no update: "
                        f"{'; '.join(self.failures[server_round])}")
        if refusals:
            self.refusals[server_round] = sorted(int(r[keys.SITE_ID]) for r in refusals)
            logger.info(f"round {server_round}: site(s) {self.sites_text(self.refusals[server_round])} refused to "
                        "train (privacy budget reached)")
        if refusals and not metrics and not errors and self._every_site_refused():
            self.exhausted, self.exhausted_round = True, server_round  # the run ends cleanly
            return
        needed = self.config.federation.min_sites or len(metrics) + len(errors)
        if len(metrics) < needed:
            raise RunError(f"round {server_round}: {len(metrics)} site(s) returned an update, "
                           f"{needed} needed; failures: {'; '.join(errors) or 'none'}")

    def _every_site_refused(self) -> bool:
        """A refusal is final (the site's projected spend only grows), but a round may ask only some
        sites (`fraction_train`, Poisson sampling): the run is exhausted once all have refused."""
        refused = {site for sites in self.refusals.values() for site in sites}
        return len(refused) >= self.config.federation.num_sites

    def record_evaluation(self, server_round: int, metrics: list[Mapping[str, Any]]) -> None:
        self.site_eval[server_round] = self._named(metrics)

    def _named(self, metrics: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Replies' metrics as kept, learning each site's name from them (it is recorded per site, not per reply)."""
        kept = []
        for reply in metrics:
            reply = dict(reply)
            name = clean_site_name(reply.pop(keys.SITE_NAME, None))
            if name and keys.SITE_ID in reply:
                self.site_names[int(reply[keys.SITE_ID])] = name
            kept.append(reply)
        return kept

    def site_label(self, site_id: int) -> str:
        """``site 2 (Harbor Savings)``: the id and, once the site has sent it, its name."""
        name = self.site_names.get(int(site_id))
        return f"site {site_id} ({name})" if name else f"site {site_id}"

    def sites_text(self, site_ids: list[int]) -> str:
        return ", ".join(f"{i} ({self.site_names[i]})" if i in self.site_names else str(i) for i in site_ids)

    def _show_new_names(self) -> None:
        """One progress line naming the sites, when their names are first (or newly) known."""
        if self.site_names != self._names_shown:
            self._names_shown = dict(self.site_names)
            logger.info("sites: " + ", ".join(f"{i} = {name}" for i, name in sorted(self.site_names.items())))

    def central_evaluate(self, server_round: int, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Evaluate the global model on the held-out test split and log the round."""
        load_exchanged_state(self.model, arrays)
        metrics = self.task.evaluate(self.model, self.test_examples)
        record = {"round": server_round, "central": metrics,
                  "sites": self._round_sites(server_round),
                  "failures": self.failures.get(server_round, []),
                  "refusals": self.refusals.get(server_round, []),
                  "rejections": self.rejections.get(server_round, []),
                  # every site that evaluated the global model on its validation split (the report's fairness)
                  "evaluation": self._round_evaluations(server_round),
                  "elapsed_s": round(time.time() - self.outputs.started, 1)}
        self.history.append(record)
        self.outputs.append_round(record)
        self.outputs.write_privacy(self.privacy_summary())
        self._show_new_names()
        logger.info(f"round {server_round}: " +
                    ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + self._epsilon_note(record))
        return metrics

    def _round_sites(self, server_round: int) -> list[dict[str, Any]]:
        evaluations = {int(m[keys.SITE_ID]): m for m in self.site_eval.get(server_round, [])}
        sites = []
        for train in sorted(self.site_train.get(server_round, []), key=lambda m: m[keys.SITE_ID]):
            site_id = int(train[keys.SITE_ID])
            named = {keys.SITE_NAME: self.site_names[site_id]} if site_id in self.site_names else {}
            entry = {"site": site_id, **named, **{k: v for k, v in train.items() if k != keys.SITE_ID}}
            entry.update({k: v for k, v in evaluations.get(site_id, {}).items()
                          if k.startswith("eval-")})
            sites.append(entry)
        return sites

    def _round_evaluations(self, server_round: int) -> list[dict[str, Any]]:
        return [{"site": int(m[keys.SITE_ID]), **{k: v for k, v in m.items() if k.startswith("eval-")
                                                  or k == keys.NUM_EXAMPLES}}
                for m in sorted(self.site_eval.get(server_round, []), key=lambda m: int(m[keys.SITE_ID]))
                if isinstance(m.get(keys.SITE_ID), (int, float))]

    def _epsilon_note(self, record: dict[str, Any]) -> str:
        spent = [s for s in record["sites"] if keys.EPSILON in s]
        if not spent:
            return ""
        most = max(spent, key=lambda s: s[keys.EPSILON])
        return f", max site epsilon={most[keys.EPSILON]:.3f} ({self.site_label(most['site'])})"

    # ------------------------------------------------------------------ summaries
    def privacy_summary(self) -> dict[str, Any]:
        privacy = self.config.privacy
        sites: dict[str, Any] = {}
        for server_round in sorted(self.site_train):
            for metrics in self.site_train[server_round]:
                site = sites.setdefault(str(int(metrics[keys.SITE_ID])), {
                    "target_epsilon": privacy.target_epsilon if privacy.enabled else None,
                    "delta": privacy.target_delta if privacy.enabled else None,
                    "noise_multiplier": metrics.get(keys.NOISE_MULTIPLIER),
                    "max_grad_norm": privacy.max_grad_norm if privacy.enabled else None,
                    "sample_rate": metrics.get(keys.SAMPLE_RATE),
                    "records": int(metrics[keys.NUM_EXAMPLES]),
                    "accountant": privacy.accountant if privacy.enabled else None,
                    "steps": 0, "epsilon_by_round": {}, "epsilon": 0.0 if privacy.enabled else None})
                site["steps"] += int(metrics[keys.STEPS])
                if keys.EPSILON in metrics:
                    site["epsilon_by_round"][str(server_round)] = metrics[keys.EPSILON]
                    site["epsilon"] = metrics[keys.EPSILON]
                    # the delta the site computed its epsilon at: its own budget's, which may not be the run's
                    site["delta"] = metrics.get(keys.DELTA, site["delta"])
        for server_round, refused in sorted(self.refusals.items()):
            for site_id in refused:
                sites.setdefault(str(site_id), {}).setdefault("refused_rounds", []).append(server_round)
        for site_id, site in sites.items():
            if int(site_id) in self.site_names:
                site[keys.SITE_NAME] = self.site_names[int(site_id)]
        summary = {"dp_enabled": privacy.enabled, "unit": "record",
                   "run_delta": privacy.target_delta if privacy.enabled else None,
                   **randomness_record(privacy.enabled, privacy.reproducible),
                   "non_private_statistics": self.disclosed_losses(),
                   "client_level": self.client_level_summary(), "sites": sites,
                   **({"warm_start": self.warm_start} if self.warm_start else {})}
        loss_sites = {int(m[keys.SITE_ID]) for replies in self.site_train.values() for m in replies
                      if keys.TRAIN_LOSS in m}
        summary["guarantee"] = guarantee_text(summary, train_loss_sites=loss_sites,
                                              reproducible=privacy.reproducible)
        return summary

    @property
    def trained_rounds(self) -> list[int]:
        """Rounds in which at least one site's update reached the model."""
        return sorted(r for r, updates in self.site_train.items()
                      if any(not u.get(keys.UPDATE_REJECTED) for u in updates))

    def disclosed_losses(self) -> dict[str, Any]:
        """Sites that sent their training loss (their opt-in): a statistic of sampled records outside epsilon."""
        sites = sorted({int(m[keys.SITE_ID]) for replies in self.site_train.values() for m in replies
                        if keys.TRAIN_LOSS in m})
        if not sites:
            return {}
        return {keys.TRAIN_LOSS: {"sites": sites, "note": "each round's mean training loss over the sampled records, "
                                  "sent in the clear by sites that opted in; not covered by epsilon"}}

    def finish(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The rounds are over: ``complete``, or ``budget-exhausted`` if the sites' budgets ended the run.

        A run in which no round trained saves no model: the initial adapters would pass for a trained one.
        """
        trained = self.trained_rounds
        outcome = {"rounds": self.config.federation.rounds, "trained_rounds": len(trained),
                   "model_round": trained[-1] if trained else None,
                   "budget_exhausted_at_round": self.exhausted_round,
                   "site_failures": {str(r): f for r, f in sorted(self.failures.items())},
                   "site_rejections": {str(r): f for r, f in sorted(self.rejections.items())},
                   "resumed_from_rounds": self.resumed_from,
                   "baseline": self.task.baseline(self.test_examples),
                   "baseline_description": self.task.baseline_description, "labels": list(self.labels)}
        if self.exhausted and not trained:
            self.outputs.set_status("budget-exhausted", **outcome)
            logger.info(f"run ended without training: every site refused round {self.exhausted_round} "
                        "(privacy budget reached); no model saved")
            return
        load_exchanged_state(self.model, arrays)
        save_model(self.model, self.config, self.labels, self.outputs.run_dir / MODEL)
        audit = self.membership_audit()
        state = "budget-exhausted" if self.exhausted else "complete"
        # The same report `finfed report` writes, from the run folder and the status about to be recorded.
        self.outputs.write_privacy(self.privacy_summary())
        write_reports(self.outputs.run_dir, {"state": state, "updated": time.time(), "membership_audit": audit,
                                             **outcome})
        self.outputs.set_status(state, membership_audit=audit, **outcome)
        logger.info(f"run {state}: {self.outputs.run_dir}")

    def interrupt(self, last_completed_round: int) -> None:
        """Stopped on request or by a signal; a resumed run continues after ``last_completed_round``."""
        self.outputs.set_status("interrupted", rounds=self.config.federation.rounds,
                                last_completed_round=last_completed_round,
                                site_failures={str(r): f for r, f in sorted(self.failures.items())},
                                site_rejections={str(r): f for r, f in sorted(self.rejections.items())},
                                resumed_from_rounds=self.resumed_from)
        logger.info(f"run interrupted after round {last_completed_round} of {self.config.federation.rounds}")

    def membership_audit(self) -> dict[str, Any] | None:
        """Simulation only: the coordinator can see the audited site's records because all are on this machine.

        Members: the site's training records. Non-members: the part of the same site's data it
        held back and never trained on (``privacy.audit_holdout_fraction``), so the attack
        measures membership, not the shift between sites' distributions.
        """
        config, site_id = self.config, AUDITED_SITE
        fraction = audit_holdout_fraction(config, site_id)
        if not fraction:
            return None
        site = simulated_site(config.data, site_id, config.federation.num_sites, self.task.records,
                              audit_holdout=fraction)
        tokenizer = load_tokenizer(config.model.backbone)
        members = self.task.encode(site.train, tokenizer)
        non_members = self.task.encode(site.audit_holdout, tokenizer)
        result = loss_threshold_auc(self.task, self.model, members, non_members, seed=config.seed)
        ceiling = ceiling_for(self.privacy_summary()["sites"].get(str(site_id)) if config.privacy.enabled else None)
        logger.info(f"membership audit ({self.site_label(site_id)}): loss-threshold attack AUC {result['auc']:.3f}"
                    + (f", DP ceiling {ceiling['auc']:.4f}" if ceiling else ""))
        return {"site": site_id, **result, "ceiling": ceiling,
                "non_member_source": (f"records of site {site_id}'s own data that it held back and never "
                                      f"trained on (`privacy.audit_holdout_fraction` {fraction:g})")}

    # ------------------------------------------------------------------ checkpoint / resume
    def snapshot(self) -> dict[str, Any]:
        """The coordinator's records after a completed round, as JSON values (see finfed.runs.checkpoint)."""
        def by_round(records: Mapping[int, Any]) -> dict[str, Any]:
            return {str(r): v for r, v in records.items()}
        return {"started": self.outputs.started, "history": self.history, "resumed_from": self.resumed_from,
                "site_train": by_round(self.site_train), "site_eval": by_round(self.site_eval),
                "failures": by_round(self.failures), "refusals": by_round(self.refusals),
                "rejections": by_round(self.rejections),
                "exhausted_round": self.exhausted_round, "client_level_rounds": self.client_level_rounds,
                "site_names": {str(i): name for i, name in self.site_names.items()}}

    def resume(self, snapshot: Mapping[str, Any], from_round: int) -> None:
        """Continue from a checkpoint: records restored, metrics.jsonl and privacy.json rewritten to match."""
        def by_round(name: str) -> dict[int, Any]:
            return {int(r): v for r, v in snapshot[name].items()}
        self.site_train, self.site_eval = by_round("site_train"), by_round("site_eval")
        self.failures, self.refusals = by_round("failures"), by_round("refusals")
        self.rejections = {int(r): v for r, v in snapshot.get("rejections", {}).items()}
        self.exhausted_round = snapshot["exhausted_round"]
        self.exhausted = self.exhausted_round is not None
        self.site_names = {int(i): name for i, name in snapshot.get("site_names", {}).items()}
        self.history = list(snapshot["history"])
        # A checkpoint from before this record: count every round up to it as released (an upper bound).
        self.client_level_rounds = [int(r) for r in snapshot.get("client_level_rounds", range(1, from_round + 1))]
        self.resumed_from = [*snapshot["resumed_from"], from_round]
        self.outputs.resume(self.history, float(snapshot["started"]), from_round)
        self.outputs.write_privacy(self.privacy_summary())
        logger.info(f"run {self.config.name}: resuming after round {from_round} of "
                    f"{self.config.federation.rounds}")

    def fail(self, error: BaseException) -> None:
        self.outputs.set_status("failed", error=f"{type(error).__name__}: {error}")
