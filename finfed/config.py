"""Typed experiment configuration: one YAML file, validated on load, overridable.

The same settings travel to Flower's apps as a flat ``run_config`` (dotted keys,
scalar values), so ``finfed simulate`` and ``flwr run`` read one source of truth.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from finfed.errors import ConfigError
from finfed.settings import NameMap, Problems, read_section
from finfed.settings import setting as _opt

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
#: `federation.num_sites` when it is left automatic and no partition column decides it
DEFAULT_NUM_SITES = 3
#: `data.partition_column`'s default: finfed's synthetic data names each row's institution in it
DEFAULT_PARTITION_COLUMN = "institution"


@dataclass(frozen=True)
class DataSettings:
    source: Literal["auto", "synthetic", "file", "hub"] = _opt(
        "auto", "where the examples come from: `file` (a local file, `data.path`), `hub` (a Hugging Face dataset) or "
                "`synthetic` (finfed's generator, for trying things out); `auto` = `file` when `data.path` is set, "
                "else `synthetic`")
    path: str = _opt("", "the CSV, JSONL or Parquet file (`source: file`) or the hub dataset's name (`source: hub`); "
                         "relative paths start at the working directory")
    test_path: str = _opt("", "a separate file for the central test set, same format; empty = hold "
                              "out `data.test_fraction` of `data.path`")
    text_column: str = _opt("text", "column (or JSON field) holding each record's text")
    label_column: str = _opt("label", "classification: column holding each record's label")
    question_column: str = _opt("question", "qa: field holding the question")
    context_column: str = _opt("context", "qa: field holding the passage the answer is taken from")
    answers_column: str = _opt("answers", "qa: field holding {text: [...], answer_start: [...]} (SQuAD style)")
    id_column: str = _opt("id", "qa: field holding each record's id (row number if absent)")
    bad_answers: Literal["refuse", "drop"] = _opt(
        "refuse", "qa: a record whose answer text is not at its offset is refused (error) or dropped (counted)")
    labels: tuple = _opt((), "classification: the label names, in the order the model's outputs "
                           "take; empty = the sorted labels found in the data (after `data.label_map`). Required "
                           "by `finfed deploy run` (the coordinator sees no data). "
                           "`--set data.labels=[negative,neutral,positive]`")
    label_map: NameMap = _opt(NameMap(), "classification: the file's label values renamed to the model's labels, "
                                         "applied to every file (training, `data.test_path`, a deployed site's) "
                                         "before labels are checked; values not listed stay as they are. "
                                         "`--set 'data.label_map={neg: negative, neu: neutral, pos: positive}'`")
    test_fraction: float = _opt(0.25, "share of the records held out as the central test set (when "
                                    "`data.test_path` is empty)", 0.0, 0.9, True)
    split_seed: int = _opt(42, "seed of the central test split, the split across sites and each "
                            "site's validation split; change it to see how much results depend on the split", 0)
    partitioner: Literal["auto", "iid", "dirichlet", "column"] = _opt(
        "auto", "simulation: how one dataset is split across the sites: `column` (one site per value of "
                "`data.partition_column`, e.g. the bank that holds each row), `iid` (at random) or `dirichlet` "
                "(label skew); `auto` = `column` when the data has `data.partition_column` (or you named that "
                "column), else `iid`")
    dirichlet_alpha: float = _opt(0.5, "`partitioner: dirichlet`: concentration of each site's label "
                                        "mix; smaller = more skewed sites (0.1: very different, 100: nearly "
                                        "iid)", 0.0, None, True)
    partition_column: str = _opt(DEFAULT_PARTITION_COLUMN, "`partitioner: column`: column naming the site that holds "
                                                           "each row; its distinct values (sorted) are the sites and "
                                                           "their names")
    validation_fraction: float = _opt(0.1, "share of each site's records kept out of training to evaluate "
                                          "the global model locally each round (the metrics the site "
                                          "reports)", 0.0, 0.5)
    max_length: int = _opt(0, "tokens per example, longer ones truncated (qa: per window of a context); 0 = the "
                              "task's default (classification 64, qa 192). Longer costs time and memory", 0, 4096)
    synthetic_size: int = _opt(0, "rows the synthetic generator produces (source=synthetic); 0 = the task's "
                                  "default (classification 3000 sentences, qa 600 questions)", 0)
    synthetic_seed: int = _opt(7, "seed of the synthetic generator (`source: synthetic`)", 0)
    synthetic_variant: str = _opt("", "a variant of the synthetic generator (`source: synthetic`); qa: `clauses` "
                                      "writes every passage with one more sentence whose answer is a clause (what "
                                      "drove growth, what a company is) and asks for it in half the passages, as "
                                      "annual reports' text questions do (other passages than the default's); "
                                      "empty = the generator's default data")

    def __post_init__(self) -> None:
        if self.source == "auto":  # resolved here, so every reader sees `file` or `synthetic`
            object.__setattr__(self, "source", "file" if self.path else "synthetic")
        elif self.source == "synthetic" and self.path:
            raise ConfigError(f"`data.source` is 'synthetic' but `data.path` is set ({self.path!r}): remove "
                              "`data.source` (a path means `file`) or remove `data.path`")
        if self.synthetic_variant and self.source != "synthetic":
            raise ConfigError(f"`data.synthetic_variant` ({self.synthetic_variant!r}) shapes finfed's synthetic data, "
                              f"but `data.source` is {self.source!r}: remove the variant or the data path")
        strays = sorted({label for label in self.label_map.values() if label not in self.labels})
        if self.labels and strays:
            raise ConfigError(f"`data.label_map` renames values to {strays}, which `data.labels` {list(self.labels)} "
                              "does not list; make the two agree")


@dataclass(frozen=True)
class QASettings:
    """Extractive question answering: how contexts are windowed, answers decoded and the span head started."""

    doc_stride: int = _opt(64, "tokens shared by consecutive windows of a context longer than `data.max_length`, so "
                                "an answer cut by one window is whole in the next; must be well below max_length",
                           0, 2048)
    max_answer_tokens: int = _opt(40, "longest answer span (in tokens) the decoder picks, before it is grown to "
                                       "whole words (\"EUR 0.42\", never \"EUR 0\"); raise it for long answers",
                                   1, 1024)
    head_init_std: float = _opt(0.1, "standard deviation of the span head's initial weights (its bias starts at 0); "
                                     "0 = the backbone's own initialisation (BERT: 0.02). Under DP a larger head "
                                     "passes the adapters more of each clipped gradient (docs/qa.md)", 0.0, 1.0)


@dataclass(frozen=True)
class ModelSettings:
    backbone: str = _opt("bundled", "the pretrained encoder: `bundled` (the small MiniLM shipped with finfed, works "
                                     "offline), a local model folder, or a Hugging Face model id")
    pooling: Literal["auto", "mean", "cls", "last"] = _opt(
        "auto", "classification: how the token vectors become one vector for the head: their `mean`, the first "
                "(`cls`) token's, or the `last` real (non-padding) token's; `auto` = `last` for decoder-only "
                "backbones (GPT-2, Llama, Qwen2, Mistral), `mean` for encoders")
    head_dropout: float = _opt(0.1, "classification: dropout rate before the head (a share of values zeroed "
                                        "while training)", 0.0, 0.9)
    device: str = _opt("auto", "where the model trains, evaluates, predicts and exports: `auto` (CUDA if present, "
                               "then Apple MPS, else the CPU), `cpu`, `cuda`, `cuda:N` or `mps`. A deployed site "
                               "chooses its own in its site.toml (`[site] device`); this one does not reach it")
    init_from: str = _opt("", "warm start: a finished run directory or a `finfed export` folder (adapter form) "
                              "whose adapters and head the federation starts from, e.g. a non-private run on "
                              "public text; task, labels, backbone and pooling must match; empty = from scratch")

    def __post_init__(self) -> None:
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"`model.device` must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


@dataclass(frozen=True)
class LoraSettings:
    method: Literal["ffa", "lora", "head"] = _opt(
        "ffa", "`ffa` (FFA-LoRA: A frozen and identical at every site, only B and the head trained, so averaging "
               "the updates is exact and DP noise touches half the parameters), `lora` (A and B trained) or `head` "
               "(only the head trains: the adapters stay as they start, zero (the backbone as pretrained) or, with "
               "`model.init_from`, the source's, which the coordinator sends; the fewest values under DP noise. A "
               "classifier's site then computes its records' backbone features once (again only if the "
               "coordinator's fixed adapters change) and runs the DP-SGD steps on the head alone)")
    r: int = _opt(8, "LoRA rank: size of the adapters; higher learns more and sends more per round", 1, 256)
    alpha: float = _opt(16.0, "LoRA scaling: the adapters' output is multiplied by alpha / r", 0.0, None, True)
    dropout: float = _opt(0.0, "dropout rate on the adapters' input while training", 0.0, 0.9)
    target_modules: tuple = _opt(("auto",), "names of the backbone's modules that get adapters (e.g. "
                                             "query,key,value); `auto` = the attention query and value projections "
                                             "peft knows for the architecture (BERT: query,value; Llama: q_proj,"
                                             "v_proj; GPT-2: c_attn; ...). More = more to learn and to send")
    init_seed: int = _opt(1234, "seed of the adapters' and head's initial values, the same at every site (with "
                                  "`ffa`, A stays so)", 0)


@dataclass(frozen=True)
class PrivacySettings:
    enabled: bool = _opt(True, "DP-SGD at every site (record-level differential privacy); false trains "
                                "without it: the non-private baseline to compare utility with")
    target_epsilon: float = _opt(8.0, "epsilon each site may spend over the whole run (with `target_delta`): the "
                                       "noise is calibrated to reach it after the last round. Lower = more "
                                       "private, less accurate", 0.0, 100.0, True)
    target_delta: float = _opt(1e-5, "delta of each site's (epsilon, delta) guarantee: keep it below 1 / the "
                                      "site's number of records", 0.0, 0.1, True)
    max_grad_norm: float = _opt(1.0, "largest L2 norm of one record's gradient (DP-SGD clipping); the noise scales "
                                       "with it", 0.0, None, True)
    accountant: Literal["rdp", "prv"] = _opt("prv", "how epsilon is computed (calibration and reports): `prv` "
                                                            "(tighter) or `rdp` (Renyi DP, more conservative)")
    noise_multiplier: float = _opt(0.0, "DP-SGD noise standard deviation / max_grad_norm, fixed; 0 = calibrated "
                                          "from `target_epsilon` (the usual choice)", 0.0)
    ledger_dir: str = _opt("", "simulation: folder of per-site privacy ledgers (`site-ID.json`) that "
                               "compose spend across runs; empty = spend tracked within the run only")
    site_budget_epsilon: float = _opt(0.0, "simulation: each site's lifetime epsilon budget per dataset; "
                                           "0 = `target_epsilon`", 0.0)
    membership_audit: bool = _opt(True, "simulation: after the run, attack the final model with site 0's "
                                        "training records against records it held back (loss-threshold "
                                        "membership inference), beside the ceiling its epsilon implies")
    audit_holdout_fraction: float = _opt(0.2, "simulation, with membership_audit: share of site 0's training "
                                              "records held back (never trained on) as the audit's non-members",
                                         0.0, 0.9, True)
    reproducible: bool = _opt(False, "tests and benchmarks only: DP sampling and noise derived from `seed`, so a "
                                      "run repeats bit for bit; NOT private against the coordinator (it knows "
                                      "the seed), labelled in every report and export, refused by `finfed deploy`")
    share_train_loss: bool = _opt(True, "simulation: sites send each round's training loss, a non-private statistic "
                                        "of their sampled records, disclosed beside epsilon; a deployed site sends "
                                        "it only if its own site.toml sets [privacy] share_train_loss = true")
    share_label_shares: bool = _opt(True, "simulation, classification: sites send, per label, the share of their "
                                          "validation records the global model predicts as it minus the label's "
                                          "share of them (non-private; with the other validation metrics it can "
                                          "give away the split's label counts); a deployed site sends it only if its "
                                          "own site.toml sets [privacy] share_label_shares = true")


@dataclass(frozen=True)
class ClientDPSettings:
    """Client-level DP on the coordinator (finfed.privacy.client_level), beside record-level DP.

    Sites are Poisson-sampled at `federation.fraction_train`; the clipped updates are summed unweighted,
    noised, and divided by the expected number of sampled sites.
    """

    mode: Literal["off", "fixed", "adaptive"] = _opt(
        "off", "client-level DP: `off`, or the coordinator clips each site's update to a `fixed` norm or an "
               "`adaptive` one (a quantile of the updates' norms) and adds noise to their sum")
    noise_multiplier: float = _opt(1.0, "noise multiplier accounted per round (noise std = it x clipping norm on "
                                        "the sum of clipped site updates; adaptive: covers the count too)", 0.0)
    clipping_norm: float = _opt(1.0, "largest L2 norm of a site's update (`fixed`), or its starting value "
                                       "(`adaptive`)", 0.0, None, True)
    target_quantile: float = _opt(0.5, "`adaptive`: share of site updates the norm aims to leave unclipped", 0.0, 1.0)
    count_stddev: float = _opt(0.0, "adaptive: noise std on the count of unclipped updates; must exceed "
                                    "noise_multiplier / 2; 0 = max(expected sites per round / 20, noise_multiplier)",
                               0.0)
    delta: float = _opt(1e-5, "delta of the client-level (epsilon, delta) guarantee; keep it below 1 / the "
                               "number of sites", 0.0, 0.1, True)

    def __post_init__(self) -> None:
        if self.mode == "adaptive" and self.count_stddev and 2 * self.count_stddev <= self.noise_multiplier:
            raise ConfigError(f"`client_dp.count_stddev` ({self.count_stddev:g}) must exceed half of "
                              f"`client_dp.noise_multiplier` ({self.noise_multiplier:g}): the noisy count alone "
                              "would spend more than the stated noise multiplier allows")


def _positive_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value > 0


@dataclass(frozen=True)
class TrainSettings:
    batch_size: int = _opt(64, "expected records per step: each record joins a step with probability "
                                   "batch_size / the site's records (Poisson sampling)", 1)
    local_epochs: int = _opt(1, "passes over the site's records per round; more steps under the same "
                                "`target_epsilon` means more noise per step", 1, 1000)
    learning_rate: float = _opt(5e-3, "learning rate of the adapters at every site", 0.0, 10.0, True)
    head_learning_rate: float = _opt(0.05, "learning rate of the task head (trained from scratch, so higher); "
                                           "0 = `learning_rate`", 0.0, 10.0)
    optimizer: Literal["adamw", "sgd"] = _opt("adamw", "each site's optimiser: `adamw` or `sgd` (momentum 0.9)")
    weight_decay: float = _opt(0.0, "`adamw`'s weight decay (0 = none)", 0.0, 1.0)
    eval_batch_size: int = _opt(64, "records per forward pass when evaluating; memory only, no effect on results", 1)
    physical_batch_size: int = _opt(16, "most examples through the model at once; larger sampled batches are "
                                        "processed in parts (records of like length together) and still make one "
                                        "(DP) step: memory and speed, not what is learned (only dropout's random "
                                        "draws fall differently). 0 = no limit. On a GPU, raise it", 0)
    num_threads: int = _opt(0, "torch threads per site process; 0 = torch's default (all cores). In "
                                     "simulation, `simulation.cpus_per_site` is the useful knob", 0, 256)
    precision: Literal["fp32", "bf16", "fp16"] = _opt(
        "fp32", "training arithmetic: `fp32`, or mixed precision (autocast) in `bf16` or `fp16` (with a loss "
                "scaler). Under DP-SGD per-sample gradients, clipping and noise stay in fp32. bf16 needs a GPU "
                "(or CPU) that supports it; fp16 needs a GPU")
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass to save memory; "
                                               "without DP only (Opacus captures each layer's activations in "
                                               "the forward pass, which checkpointing would repeat)")
    class_weights: NameMap = _opt(NameMap(), "classification: each label's weight in the training loss (a label "
                                             "not named weighs 1), e.g. `{negative: 3, positive: 1.5}` to weigh "
                                             "rare labels up. Numbers you fix (public knowledge, or chosen on "
                                             "validation), never counted from the sites' data. Under DP each "
                                             "record is also clipped to its label's weight over the largest "
                                             "weight times `privacy.max_grad_norm`, so the weights act on clipped "
                                             "records too and none exceeds the norm: the guarantee is unchanged "
                                             "(docs/privacy.md). The reported training loss is the weighted one; "
                                             "evaluation is unweighted")

    def __post_init__(self) -> None:
        for label, weight in self.class_weights.items():
            if not _positive_number(weight):
                raise ConfigError(f"`train.class_weights` gives label {label!r} the weight {weight!r}; "
                                  "expected a number above 0 (1 = unweighted)")

    def weight_of(self, label: str) -> float:
        """``label``'s weight in the training loss (1 when `class_weights` does not name it)."""
        return float(self.class_weights.get(label, 1))


@dataclass(frozen=True)
class FederationSettings:
    num_sites: int = _opt(0, "sites (institutions) in the federation; 0 = automatic: the number of distinct "
                               "values of `data.partition_column` when the data is split by that column, else "
                               f"{DEFAULT_NUM_SITES}. `finfed deploy run` sets it from the consortium", 0, 1000)
    rounds: int = _opt(4, "federated rounds: in each, sites train locally and the coordinator averages "
                                 "their updates; the whole run spends `privacy.target_epsilon`", 1, 10000)
    fraction_train: float = _opt(1.0, "share of sites asked to train each round (with client-level DP: each "
                                      "site's independent sampling probability)", 0.0, 1.0, True)
    fraction_evaluate: float = _opt(1.0, "share of the sites online asked each round to evaluate the global model "
                                         "on their validation split (at least one; 0 = none, which saves each "
                                         "site a message and a pass over its validation split per round); the "
                                         "coordinator's central evaluation on the test split runs every round "
                                         "regardless",
                                    0.0, 1.0)
    min_sites: int = _opt(0, "fewest site updates a round needs, else the run stops; 0 = every sampled site", 0)
    round_timeout: float = _opt(3600.0, "seconds to wait for the sites' replies in a round (and for them to "
                                        "connect, unless `connect_timeout` is set)", 1.0)
    connect_timeout: float = _opt(0.0, "seconds to wait for every site to connect before round 1 (then going on "
                                       "with those online if `min_sites` are) and for `min_sites` to be online "
                                       "before each later round; 0 = `round_timeout`. Sites that are slow to "
                                       "start need a long wait, long local training a long `round_timeout`", 0.0)
    # Filled in by `finfed deploy run` from the consortium's registrations, so waits can name missing sites.
    site_nodes: str = _opt("", "deployment: the consortium's sites as node-id:name pairs (set by finfed deploy "
                               "run); empty = sites are named by number")
    # Secure aggregation (Flower's SecAgg+): the coordinator only ever sees the sum of the sites' updates.
    secure_aggregation: bool = _opt(False, "SecAgg+: sites mask their updates so the coordinator sees only "
                                           "their weighted sum")
    secagg_num_shares: float = _opt(1.0, "SecAgg+: sites each site's key is secret-shared with: a share of the "
                                         "sampled sites (<= 1) or a count (> 2)", 0.0, None, True)
    secagg_reconstruction_threshold: float = _opt(
        0.6, "SecAgg+: shares needed to unmask: a share of `secagg_num_shares` (<= 1) or a count (>= 2); higher "
             "is safer against collusion, lower tolerates more drop-outs", 0.0, None, True)
    secagg_clipping_range: float = _opt(8.0, "SecAgg+: every sent value must lie in [-range, range] (checked at "
                                             "the site: out-of-range values are refused, not clipped)",
                                        0.0, None, True)
    secagg_quantization_range: int = _opt(4194304, "SecAgg+: integer levels each value is quantized to "
                                                   "(2**22; the modulus is 2**32)", 2, 2**31)
    secagg_max_weight: float = _opt(10000.0, "SecAgg+: largest example count a site may weight its update "
                                             "with (a site with more training records is refused)",
                                    0.0, None, True)
    # How site updates become the global model, and what the coordinator checks before (docs/secure-aggregation-
    # and-faults.md, "Validating updates" and "Robust aggregation").
    aggregation: Literal["fedavg", "median", "trimmed_mean", "krum"] = _opt(
        "fedavg", "how the site updates are combined: `fedavg` (mean weighted by example counts), or a robust "
                  "rule from Flower: `median` (coordinate-wise median), `trimmed_mean` (coordinate-wise mean "
                  "without the `trim_fraction` largest and smallest values) or `krum` (the one update closest to "
                  "its neighbours). Robust rules need each site's own update: refused with SecAgg+ and "
                  "client-level DP")
    trim_fraction: float = _opt(0.2, "`aggregation: trimmed_mean`: share of the updates cut at each end of every "
                                     "coordinate (with 3 sites, below 1/3 cuts none)", 0.0, 0.5,
                                exclusive_max=True)
    krum_byzantine_sites: int = _opt(0, "`aggregation: krum`: sites assumed malicious (f); Krum needs at least "
                                        "2f + 3 sites", 0)
    validate_updates: bool = _opt(True, "check every site update before aggregating it: tensor names and shapes "
                                        "of the global model, finite values, L2 norm of the change within "
                                        "`update_norm_bound`; a failing update is rejected and recorded, the "
                                        "round goes on with the others")
    update_norm_bound: float = _opt(0.0, "largest L2 norm of a site's change to the trainable tensors in one "
                                         "round; 0 = derived from the training settings (optimiser, learning "
                                         "rates, steps, DP clipping and noise: a worst-case bound, see "
                                         "docs/secure-aggregation-and-faults.md)", 0.0)

    def __post_init__(self) -> None:
        if self.secure_aggregation:
            _check_secure_aggregation(self)
        if self.aggregation == "krum" and self.num_sites and self.num_sites < 2 * self.krum_byzantine_sites + 3:
            raise ConfigError(f"`federation.aggregation: krum` with `federation.krum_byzantine_sites` "
                              f"{self.krum_byzantine_sites} needs at least {2 * self.krum_byzantine_sites + 3} "
                              f"sites (2f + 3), got `federation.num_sites` {self.num_sites}")


def _check_secure_aggregation(federation: "FederationSettings") -> None:
    """SecAgg+ settings Flower's workflow would reject mid-run (or accept unsafely), refused at load."""
    shares, threshold = federation.secagg_num_shares, federation.secagg_reconstruction_threshold
    if federation.aggregation != "fedavg":
        raise ConfigError(f"`federation.aggregation: {federation.aggregation}` is impossible with "
                          "`federation.secure_aggregation`: SecAgg+ reveals only the weighted sum of the updates, "
                          "and a median, trimmed mean or Krum needs each site's own update; use `fedavg`")
    if federation.num_sites == 0:  # automatic: checked again once the data has decided it
        if federation.min_sites == 1:
            raise ConfigError("`federation.secure_aggregation` needs at least 2 sites per round "
                              "(`federation.min_sites` 0 or >= 2): the sum of one update is that update")
    elif federation.num_sites < 2 or federation.min_sites == 1:
        raise ConfigError("`federation.secure_aggregation` needs at least 2 sites per round (`federation.num_sites` "
                          ">= 2, `federation.min_sites` 0 or >= 2): the sum of one update is that update")
    if not (shares <= 1 or (shares > 2 and shares == int(shares))):
        raise ConfigError(f"`federation.secagg_num_shares` must be a share in (0, 1] or a whole count above 2, "
                          f"got {shares!r}")
    if not (threshold <= 1 or (threshold >= 2 and threshold == int(threshold))):
        raise ConfigError(f"`federation.secagg_reconstruction_threshold` must be a share in (0, 1] or a whole "
                          f"count of at least 2, got {threshold!r}")
    if shares > 2 and threshold >= 2 and threshold >= shares:
        raise ConfigError(f"`federation.secagg_reconstruction_threshold` ({threshold:g}) must be below "
                          f"`federation.secagg_num_shares` ({shares:g})")


@dataclass(frozen=True)
class SimulationSettings:
    cpus_per_site: int = _opt(2, "CPU cores Ray reserves per simulated site: sites train in parallel "
                                  "only as far as the machine's cores allow (2 cores, 2 per site: one at a time)", 1)
    gpus_per_site: float = _opt(0.0, "share of a GPU Ray reserves per simulated site (Flower's client resources): "
                                     "0.25 lets four sites train at once on one GPU; 0 = sites reserve none", 0.0)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = _opt("default", "the run's name: its outputs go to `output_dir/name`")
    # The registered tasks' names (finfed.tasks registers them; config sits below it, so it lists them here and
    # tests/test_boundaries.py checks the two agree). Each task checks its own settings: Task.check_config.
    task: Literal["classification", "qa"] = _opt(
        "classification", "what the federation learns: sentence classification or extractive QA")
    seed: int = _opt(0, "seed of non-private training randomness (dropout, the non-DP baseline's shuffling); DP "
                        "sampling and noise follow it only with `privacy.reproducible`", 0)
    output_dir: str = _opt("runs", "folder that receives run directories")
    run_dir: str = _opt("", "the run directory itself; empty = `output_dir/name`")
    resume_from: str = _opt("", "coordinator: run directory of an interrupted run to continue from its last "
                                "checkpointed round (same settings required); empty = start afresh")
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    simulation: SimulationSettings = field(default_factory=SimulationSettings)
    client_dp: ClientDPSettings = field(default_factory=ClientDPSettings)
    qa: QASettings = field(default_factory=QASettings)

    def __post_init__(self) -> None:
        if not self.federation.num_sites and not self.sites_from_column:
            object.__setattr__(self, "federation", dataclasses.replace(self.federation, num_sites=DEFAULT_NUM_SITES))
        if self.data.source != "synthetic" and not self.data.path:
            raise ConfigError(f"`data.path` is required when `data.source` is {self.data.source!r}")
        if self.data.partitioner == "column" and not self.data.partition_column:
            raise ConfigError("`data.partition_column` is required when `data.partitioner` is 'column'")
        if 0 < self.data.synthetic_size < 30:
            raise ConfigError(f"`data.synthetic_size` must be 0 (the task's default) or >= 30, "
                              f"got {self.data.synthetic_size}")
        if not self.lora.target_modules:
            raise ConfigError("`lora.target_modules` must name at least one backbone module")
        if self.train.gradient_checkpointing and self.privacy.enabled:
            raise ConfigError("`train.gradient_checkpointing` needs `privacy.enabled: false`: Opacus computes "
                              "per-sample gradients from activations it captures in the forward pass, and "
                              "checkpointing re-runs that forward pass during backward, so activations would be "
                              "captured twice and the clipped gradients be wrong")
        if self.federation.num_sites and self.federation.min_sites > self.federation.num_sites:
            raise ConfigError(f"`federation.min_sites` ({self.federation.min_sites}) exceeds "
                              f"`federation.num_sites` ({self.federation.num_sites})")
        if self.federation.secure_aggregation and self.client_dp.mode != "off":
            raise ConfigError("`client_dp.mode` must be 'off' with `federation.secure_aggregation`: server-side "
                              "clipping needs each site's own update, which SecAgg+ hides from the coordinator")
        if self.client_dp.mode != "off" and self.federation.aggregation != "fedavg":
            raise ConfigError(f"`federation.aggregation: {self.federation.aggregation}` is impossible with "
                              "`client_dp.mode` on: client-level DP adds noise calibrated to the sensitivity of a "
                              "sum of clipped updates, which a median, trimmed mean or Krum selection is not; use "
                              "`fedavg`")
        if self.client_dp.mode != "off" and self.federation.min_sites:
            raise ConfigError("`federation.min_sites` must be 0 with `client_dp.mode` on: sites are Poisson-sampled, "
                              "so a round may ask fewer sites (or none), and stopping the run on that would "
                              "reveal the sample size")

    @property
    def sites_from_column(self) -> bool:
        """Whether the sites may come from a partition column of a file or hub dataset (`federation.num_sites`
        then stays 0 until :func:`finfed.data.partition.resolve_num_sites` reads the column)."""
        return self.data.source != "synthetic" and self.data.partitioner in ("auto", "column")

    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(self.output_dir) / self.name


# --------------------------------------------------------------------------- building

def config_from_dict(values: Mapping[str, Any], source: str | Path = "") -> ExperimentConfig:
    """Build and validate a config from nested plain values; errors name ``source`` (the file) and each key."""
    problems = Problems(source)
    try:
        config = read_section(ExperimentConfig, values or {}, problems)
    except ConfigError as exc:  # a rule between settings (a section's __post_init__)
        problems.add((), str(exc))
    problems.raise_if_any()
    return config


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """Nested plain values (lists, not tuples), ready for YAML or JSON."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):  # sections and maps (NameMap) alike
            return {k: plain(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple) else value

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings, each value read as YAML: ``3``, ``true``, ``text``, a list
    ``[negative,neutral,positive]`` (or ``negative,neutral,positive``), a map ``{neg: negative, pos: positive}``."""
    result = _deep_copy(values)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like `section.key=value`")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override `{dotted}`: cannot parse value {raw!r}: {exc}") from exc
        _set_dotted(result, dotted.strip(), value)
    return result


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    node = values
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override `{dotted}`: `{part}` is not a section")
    node[leaf] = value


def _deep_copy(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in values.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(values).__name__}")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment file (or the defaults), apply overrides, validate."""
    values = read_yaml(path) if path else {}
    return config_from_dict(apply_overrides(values, overrides or []), source=path or "")


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")


# --------------------------------------------------------------------------- run_config

def to_run_config(config: ExperimentConfig) -> dict[str, bool | int | float | str]:
    """Flatten to Flower's scalar ``run_config`` (dotted keys; lists become comma-joined text)."""
    # Flower's own flattening rule, imported here: importing flwr takes a second the CLI need not spend.
    from finfed.compat import flatten_run_config

    def scalars(section: Any) -> dict[str, Any]:
        values = {}
        for spec in dataclasses.fields(section):
            value = getattr(section, spec.name)
            values[spec.name] = (scalars(value) if dataclasses.is_dataclass(value) else value.to_text()
                                 if isinstance(value, NameMap) else ",".join(value) if isinstance(value, tuple)
                                 else value)
        return values

    return flatten_run_config(scalars(config))


def from_run_config(run_config: Mapping[str, Any]) -> ExperimentConfig:
    """Rebuild the config from Flower's flat ``run_config``."""
    from finfed.compat import unflatten_run_config

    try:
        nested = unflatten_run_config(dict(run_config))
    except TypeError:  # a key that is both a value and a section, e.g. `privacy` and `privacy.enabled`
        raise ConfigError(f"run config keys {sorted(run_config)} mix a value and a section of one name") from None
    return config_from_dict(nested)


def with_absolute_paths(config: ExperimentConfig) -> ExperimentConfig:
    """Resolve relative file paths now: Flower's processes run in another working directory."""
    def absolute(value: str) -> str:
        return str(Path(value).expanduser().resolve()) if value and Path(value).expanduser().exists() else value

    privacy = dataclasses.replace(config.privacy, ledger_dir=str(Path(config.privacy.ledger_dir).resolve())
                                  if config.privacy.ledger_dir else "")
    data = dataclasses.replace(config.data, test_path=absolute(config.data.test_path),
                               path=absolute(config.data.path) if config.data.source == "file" else config.data.path)
    model = dataclasses.replace(config.model, backbone=absolute(config.model.backbone),
                                init_from=absolute(config.model.init_from))
    return dataclasses.replace(config, data=data, model=model, privacy=privacy,
                               run_dir=str(config.resolved_run_dir.resolve()))
