"""What a site may send: the one place that decides it.

Two rules, read by the ClientApp (``finfed/site/guard.py``), its audit log (``finfed/site/audit.py``),
the coordinator (``finfed/coordinator/rounds.py``) and the tests:

1. **The allow-list.** A reply may carry only the records and keys named here for its message
   type (train, evaluate, each SecAgg+ stage). Metric values are numbers by construction
   (Flower's MetricRecord); their *keys* are listed explicitly, so no key can be made of a
   record's text. ``train-loss`` (a non-private statistic of the sampled records) is allowed only
   when the site opted in (node config ``share-train-loss``), and so are the evaluate reply's
   ``eval-share-gap-<index>`` (node config ``share-label-shares``). A reply holding anything else is
   not sent: the site sends an ``internal error`` instead (tested in tests/test_disclosure.py).
   The one text a reply carries is the site's *name* (record ``site``, key ``site-name``; under SecAgg+ a
   FitRes metric): an institution's public name from its own configuration (deployment) or the partition
   column's value (simulation), cleaned of paths and control characters (``finfed.wire.clean_site_name``).
2. **Error reasons.** Any exception becomes ``<category>: <record-free reason>``. finfed's own
   errors contribute their ``public_reason`` (set where they are raised, e.g. ``a label is not in
   the run's label list (row 17)``) or a generic text for their kind; any other exception only its
   type name, never its message, which may hold a label, a text, an answer or a file path. The
   full message and traceback stay in the site's own log.
3. **Log records.** One that quotes a site's data (a record, an answer, a file's contents) is logged
   with ``extra=SITE_ONLY``: the site's own log keeps it (``finfed/site/log_mod.py``); the ``finfed``
   command's console and the ServerApp's output drop it (``off_site``), so in a simulation, where
   the coordinator reads the sites' files too, it is not shown there either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from finfed import constants as keys
from finfed.errors import (
    BudgetExhausted,
    ConfigError,
    DataError,
    FinfedError,
    PrivacyError,
    RunError,
    TrainingError,
)

# Owned by the "dprng" change (constants.DELTA); spelled here too so this module stands alone.
DELTA = getattr(keys, "DELTA", "delta")

DATA_ERROR, CONFIG_ERROR, PRIVACY_REFUSAL = "data error", "config error", "privacy refusal"
TRAINING_ERROR, INTERRUPTED, INTERNAL_ERROR = "training error", "interrupted", "internal error"
CATEGORIES = (DATA_ERROR, CONFIG_ERROR, PRIVACY_REFUSAL, TRAINING_ERROR, INTERRUPTED, INTERNAL_ERROR)

# Most specific first: BudgetExhausted is a PrivacyError.
_CATEGORY_OF = ((BudgetExhausted, PRIVACY_REFUSAL), (DataError, DATA_ERROR), (ConfigError, CONFIG_ERROR),
                (PrivacyError, PRIVACY_REFUSAL), (TrainingError, TRAINING_ERROR), (RunError, INTERNAL_ERROR))
_GENERIC = {
    DATA_ERROR: "the site's data could not be used (details in the site's log)",
    CONFIG_ERROR: "a setting is missing or invalid (details in the site's log)",
    PRIVACY_REFUSAL: "a privacy guard stopped the round (details in the site's log)",
    TRAINING_ERROR: "local training failed (details in the site's log)",
    INTERRUPTED: "the site stopped the round on request",
    INTERNAL_ERROR: "unexpected failure (details in the site's log)",
}
MAX_REASON = 300  # characters: a reason is a sentence, never a dump

# ---------------------------------------------------------------------------- the allow-list

# Metric keys a train reply may carry (plain: record ``metrics``; SecAgg+: ``fitres.metrics``).
TRAIN_METRICS = frozenset({keys.NUM_EXAMPLES, keys.SITE_ID, keys.EPSILON, DELTA, keys.STEPS,
                           keys.NOISE_MULTIPLIER, keys.SAMPLE_RATE, keys.REFUSED})
OPT_IN_TRAIN_METRICS = frozenset({keys.TRAIN_LOSS})  # only with node config `share-train-loss`
# Metric keys an evaluate reply may carry: the tasks' validation metrics (classification, qa), and per-label
# recall (classification): each label's share of the site's validation records the global model gets right.
# Like the other validation metrics it is a disclosed, non-private statistic of the site's validation split
# (not covered by epsilon; the report says so); its keys are `eval-recall-<index>`, never a label's text.
LABEL_RECALL_METRICS = frozenset(f"{keys.EVAL_RECALL_PREFIX}{i}" for i in range(keys.MAX_SHARED_LABELS))
EVALUATE_METRICS = frozenset({keys.NUM_EXAMPLES, keys.SITE_ID, keys.EVAL_LOSS, keys.EVAL_ACCURACY,
                              keys.EVAL_MACRO_F1, keys.EVAL_EXACT_MATCH, keys.EVAL_F1}) | LABEL_RECALL_METRICS
# Opt-in (node config `share-label-shares`): each label's predicted minus true share of the site's validation
# records, `eval-share-gap-<index>`. With the other validation metrics it can give away the split's label counts, so a
# deployed site sends it only if its own site.toml says so (docs/privacy.md).
OPT_IN_EVALUATE_METRICS = frozenset(f"{keys.EVAL_SHARE_GAP_PREFIX}{i}" for i in range(keys.MAX_SHARED_LABELS))

# SecAgg+ (Flower's secaggplus_mod): the protocol's own keys per stage, in record "secaggplus_configs".
SECAGG_RECORD = "secaggplus_configs"
SECAGG_STAGE_KEYS = {"setup": frozenset({"pk1", "pk2"}), "share_keys": frozenset({"dsts", "ctxts"}),
                     "collect_masked_vectors": frozenset({"masked_params"}),
                     "unmask": frozenset({"nids", "shares"})}
# The legacy FitRes the train handler returns under SecAgg+; its tensors are cleared by the mod.
FITRES_NUM_EXAMPLES, FITRES_METRICS, FITRES_STATUS, FITRES_PARAMETERS = (
    "fitres.num_examples", "fitres.metrics", "fitres.status", "fitres.parameters")

ANY_TENSOR = "<adapter tensors named in the request>"
# The site's name: its own record in plain replies; among the FitRes metrics (text allowed there) under SecAgg+.
SITE_RECORD = {keys.SITE_RECORD: frozenset({keys.SITE_NAME})}
SITE_NAME_METRIC = frozenset({keys.SITE_NAME})


class DisclosureError(FinfedError):
    """A reply held a record or key the allow-list does not name: it must not leave the site."""


@dataclass(frozen=True)
class OptIns:
    """The statistics a site chose to send beyond the fixed allow-list. The site decides
    (``finfed.site.node_settings.site_opt_ins``); nothing is opted in unless it says so."""

    train_loss: bool = False  # `train-loss` in train replies
    label_shares: bool = False  # `eval-share-gap-<index>` in evaluate replies


@dataclass(frozen=True)
class ReplyPolicy:
    """The records a reply may hold: record name -> allowed keys (``ANY_TENSOR``: the request's tensors), and the
    opt-ins that widened it (their names, for the audit log's ``allowed_by``)."""

    name: str
    records: Mapping[str, frozenset[str]]
    opted_in: tuple[str, ...] = ()


def outgoing_metrics(metrics: Mapping[str, Any], opt_ins: OptIns) -> dict[str, Any]:
    """A reply's metrics without the opt-in statistics the site did not opt in to."""
    dropped = (frozenset() if opt_ins.train_loss else OPT_IN_TRAIN_METRICS) | \
        (frozenset() if opt_ins.label_shares else OPT_IN_EVALUATE_METRICS)
    return {k: v for k, v in metrics.items() if k not in dropped}


def reply_policy(message_type: str, secagg_stage: str | None, opt_ins: OptIns = OptIns()) -> ReplyPolicy:
    """The allow-list for one reply: by message type and, under SecAgg+, by protocol stage; the opt-in
    statistics only where the site opted in to them."""
    kind = message_type.split(".")[0]
    if kind == "evaluate":
        opted = ("label share gaps",) if opt_ins.label_shares else ()
        metrics = EVALUATE_METRICS | (OPT_IN_EVALUATE_METRICS if opt_ins.label_shares else frozenset())
        return ReplyPolicy("evaluate", {keys.METRICS: metrics, **SITE_RECORD}, opted)
    if kind != "train":
        return ReplyPolicy(kind, {})  # finfed answers train and evaluate only
    opted = ("train-loss",) if opt_ins.train_loss else ()
    metrics = TRAIN_METRICS | (OPT_IN_TRAIN_METRICS if opt_ins.train_loss else frozenset())
    if secagg_stage is None:
        return ReplyPolicy("train", {keys.ARRAYS: frozenset({ANY_TENSOR}), keys.METRICS: metrics, **SITE_RECORD},
                           opted)
    records = {SECAGG_RECORD: SECAGG_STAGE_KEYS.get(secagg_stage, frozenset())}
    if secagg_stage != "collect_masked_vectors":
        return ReplyPolicy(f"train/secagg+:{secagg_stage}", records)
    records.update({FITRES_PARAMETERS: frozenset(), FITRES_NUM_EXAMPLES: frozenset({"num_examples"}),
                    FITRES_METRICS: metrics | SITE_NAME_METRIC, FITRES_STATUS: frozenset({"code", "message"})})
    return ReplyPolicy(f"train/secagg+:{secagg_stage}", records, opted)


def allow_list(opt_ins: OptIns = OptIns()) -> dict[str, dict[str, list[str]]]:
    """The whole allow-list as plain JSON, one entry per reply kind (the names audit lines cite in ``allowed_by``)."""
    policies = [reply_policy("train", None, opt_ins), reply_policy("evaluate", None, opt_ins),
                *(reply_policy("train", stage, opt_ins) for stage in SECAGG_STAGE_KEYS)]
    return {p.name: {record: sorted(allowed) for record, allowed in p.records.items()} for p in policies}


def disallowed_fields(content: Mapping[str, Mapping[str, Any]], policy: ReplyPolicy,
                      tensor_names: Iterable[str] = ()) -> list[str]:
    """``record`` or ``record.key`` of everything in ``content`` the policy does not allow (empty: all allowed)."""
    tensors = set(tensor_names)
    found = []
    for record_name, record in content.items():
        allowed = policy.records.get(record_name)
        if allowed is None:
            found.append(record_name)
            continue
        if ANY_TENSOR in allowed:
            found += [f"{record_name}.{k}" for k in record.keys() if tensors and k not in tensors]
        else:
            found += [f"{record_name}.{k}" for k in record.keys() if k not in allowed]
    return found


# ---------------------------------------------------------------------------- error reasons

def error_category(exc: BaseException) -> str:
    declared = getattr(exc, "category", None)  # an error class may declare its category (e.g. a stop)
    if declared in CATEGORIES:
        return declared
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    return next((category for kind, category in _CATEGORY_OF if isinstance(exc, kind)), INTERNAL_ERROR)


def error_reason(exc: BaseException) -> str:
    """``<category>: <record-free reason>`` for any exception: what a site may send about its failure."""
    category = error_category(exc)
    public = getattr(exc, "public_reason", None) if isinstance(exc, FinfedError) else None
    if public:
        detail = str(public)
    elif isinstance(exc, FinfedError) or category == INTERRUPTED:
        detail = _GENERIC[category]
    else:  # an exception finfed did not raise: its message may hold anything, its type name does not
        detail = f"unexpected {type(exc).__name__} (details in the site's log)"
    return f"{category}: {detail}"[:MAX_REASON]


_INFRASTRUCTURE_CODES = {3, 4, 5}  # Flower's own fixed texts: message or reply unavailable, node unavailable
_CATEGORY_PREFIX = re.compile(rf"^({'|'.join(map(re.escape, CATEGORIES))}): ")


def shown_reason(code: int, reason: str) -> str:
    """What the coordinator records of an error reply: a reason in finfed's form (or one of Flower's
    own infrastructure reasons), else nothing of its text (a foreign site's raw exception text)."""
    reason = str(reason)
    if _CATEGORY_PREFIX.match(reason) or int(code) in _INFRASTRUCTURE_CODES:
        return reason[:MAX_REASON]
    return "reason withheld (not in finfed's record-free form)"


# ---------------------------------------------------------------------------- log records

SITE_ONLY = {"site_only": True}  # ``logger.info(..., extra=SITE_ONLY)``: for the site's own log only


def off_site(record: logging.LogRecord) -> bool:
    """A logging filter for every handler off the site: drops the records marked ``SITE_ONLY``."""
    return not getattr(record, "site_only", False)
