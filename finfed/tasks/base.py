"""The interface every task implements, and the registry that finds one by name.

Everything that differs between tasks (data format, defaults, settings checks, model,
metrics, export pieces, report wording, prediction) is an attribute or method here,
so no code outside finfed.tasks asks which task is running (tests/test_boundaries.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import pandas as pd
import torch
from torch import nn

from finfed.config import ExperimentConfig
from finfed.data.partition import RecordFormat, load_federated_data
from finfed.errors import ConfigError
from finfed.models.adapters import add_adapters
from finfed.models.architectures import enable_gradient_checkpointing
from finfed.models.devices import resolve_device


@dataclass(frozen=True)
class Explainable:
    """One model input made ready for attribution (finfed.inference.explain): what is scored, and how it is shown.

    ``inputs`` is a batch of one (``input_ids``, ``attention_mask``, ...) as the task's model takes it;
    ``score`` maps the model's output to the explained value, one per example (the predicted label's
    logit, the answer span's start + end logit); ``spans`` gives each token's characters in ``text``
    (None: a token not shown, e.g. [CLS], or a QA question's tokens).
    """

    inputs: dict[str, torch.Tensor]
    score: Callable[[Any], torch.Tensor]
    target: str  # what `score` is, in words
    text: str
    spans: list[tuple[int, int] | None]
    prediction: dict[str, Any]  # the task's prediction, as `finfed predict --json` shows it


@dataclass(frozen=True)
class TrainingView:
    """What a round's DP-SGD steps run on: the module holding the trainable tensors, the examples it takes,
    and how they are batched and scored. Usually the whole model on the encoded records; a head-only
    classifier trains its head on features computed once and kept (finfed.models.fixed_features)."""

    module: nn.Module
    examples: Sequence[dict]
    collate: Callable[[Sequence[dict]], dict]
    loss: Callable[[nn.Module, dict], torch.Tensor]
    #: under DP, each record's clipping norm as a share (0, 1] of `privacy.max_grad_norm`, from a collated batch;
    #: None = every record clipped to the full norm
    clip_scales: Callable[[dict], torch.Tensor] | None = None


class Task(ABC):
    """What differs between classification, QA, ...; everything else is shared."""

    #: Opacus assumes this reduction; see finfed.training.local.LOSS_REDUCTION
    loss_reduction: str = "mean"
    #: names of the metrics :meth:`evaluate` returns, the first one is the headline
    metric_names: tuple[str, ...] = ()
    #: the task head: trained in full (not through adapters) and sent with them
    head_name: str = "classifier"
    #: whether the federation needs a fixed label list
    needs_labels: bool = True
    #: what :meth:`baseline` predicts, for reports
    baseline_description: str = "a trivial predictor"
    #: the name the task is registered under (the `task` setting)
    name: ClassVar[str] = ""
    #: how the task's records are read, checked, generated and split (finfed.data.partition)
    records: ClassVar[RecordFormat]
    #: tokens per example when `data.max_length` is 0
    default_max_length: ClassVar[int]
    #: what finfed's generator produces for this task, as reports name it
    synthetic_description: ClassVar[str]
    #: a simulated site's dataset name on synthetic data, under which its ledger composes spend (never change it)
    synthetic_dataset: ClassVar[str]
    #: said after the privacy guarantee where the protected unit needs explaining; empty = nothing to add
    protected_unit: ClassVar[str] = ""
    #: the ``transformers.pipeline`` task an exported model loads under
    pipeline_task: ClassVar[str]
    #: the exported README's note on the code ``trust_remote_code=True`` runs
    export_code: ClassVar[str]
    #: the example call (on ``pipe``) and extra ``pipeline(...)`` arguments of an export's load snippet
    pipeline_example: ClassVar[str]
    pipeline_arguments: ClassVar[str] = ""
    #: how `finfed predict` asks this task's model (said when it is asked the wrong way)
    predict_usage: ClassVar[str]

    def __init__(self, config: ExperimentConfig, labels: Sequence[str]) -> None:
        self.config = config
        self.labels = list(labels)

    # ------------------------------------------------------------------ settings and data
    @classmethod  # noqa: B027 (a hook with nothing to do by default: a task may need no checks)
    def check_config(cls, config: ExperimentConfig) -> None:
        """Refuse settings this task cannot run with (ConfigError); called wherever a task is looked up."""

    @classmethod
    def max_length_for(cls, config: ExperimentConfig) -> int:
        """Tokens per example: configured, or the task's default."""
        return config.data.max_length or cls.default_max_length

    @property
    def max_length(self) -> int:
        return self.max_length_for(self.config)

    # ------------------------------------------------------------------ export and prediction
    def export_settings(self, max_length: int) -> dict[str, int] | None:
        """Settings an exported model's pipeline needs beyond its weights (None: none)."""
        return None

    def ship_export_code(self, model: Any, settings: dict[str, int] | None, folder: Path) -> None:  # noqa: B027
        """Put into ``folder`` (and name in ``model.config``) any code the export needs that the model's own
        ``save_pretrained`` does not copy."""

    def label_texts(self, model: nn.Module, tokenizer: Any, texts: Sequence[str]) -> list[dict]:
        """Each text's label and class probabilities."""
        raise ConfigError(f"a {self.name!r} model labels no texts; {self.predict_usage}")

    def answer_question(self, model: nn.Module, tokenizer: Any, question: str, context: str, *,
                        max_answer_tokens: int | None = None) -> Any:
        """The answer span (text, score, character offsets) of ``question`` in ``context``; answers up to
        ``max_answer_tokens`` long if given, else as long as the run's settings allow."""
        raise ConfigError(f"a {self.name!r} model answers no questions; {self.predict_usage}")

    @classmethod
    @abstractmethod
    def prediction_columns(cls, config: ExperimentConfig) -> dict[str, str]:
        """`finfed predict --input`: each field a row must give (e.g. ``text``) -> the column the run read it from."""

    @abstractmethod
    def predict_rows(self, model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, str]], *,
                     max_answer_tokens: int | None = None) -> list[dict]:
        """One prediction per row (rows keyed by :meth:`prediction_columns`' fields), as `finfed predict`
        prints it: the same dict for a row given alone or among others."""

    def explainable_text(self, model: nn.Module, tokenizer: Any, text: str) -> Explainable:
        """``text`` with its predicted label, ready for attribution."""
        raise ConfigError(f"a {self.name!r} model labels no texts; {self.predict_usage}")

    def explainable_answer(self, model: nn.Module, tokenizer: Any, question: str, context: str, *,
                           max_answer_tokens: int | None = None, runners_up: int = 3) -> Explainable:
        """The answer span of ``question`` in ``context`` (and up to ``runners_up`` next-best spans), ready for
        attribution."""
        raise ConfigError(f"a {self.name!r} model answers no questions; {self.predict_usage}")

    @abstractmethod
    def build_base_model(self) -> nn.Module:
        """The backbone with its task head, before adapters."""

    def build_model(self) -> nn.Module:
        """The backbone with adapters and task head, trainable tensors marked, on `model.device`."""
        base = self.build_base_model()
        if self.config.train.gradient_checkpointing:
            enable_gradient_checkpointing(base)
        return add_adapters(base, self.config.lora, head=self.head_of(base)).to(self.device)

    def head_of(self, base: nn.Module) -> str:
        """The name of ``base``'s task head module."""
        return self.head_name

    @property
    def device(self) -> torch.device:
        """Where this task's model runs (`model.device` resolved on this machine)."""
        return resolve_device(self.config.model.device)

    @abstractmethod
    def encode(self, frame: pd.DataFrame, tokenizer: Any) -> list[dict]:
        """Tokenised examples, one dict per training sample."""

    def encode_for_evaluation(self, frame: pd.DataFrame, tokenizer: Any) -> list[dict]:
        """Tokenised examples for :meth:`evaluate` (by default the training encoding)."""
        return self.encode(frame, tokenizer)

    @abstractmethod
    def collate(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Pad a list of encoded examples into a batch."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of a batch."""

    def training_view(self, model: nn.Module, examples: Sequence[dict]) -> TrainingView:
        """What one round trains on (called once per round, after the coordinator's tensors are loaded)."""
        return TrainingView(model, examples, self.collate, self.loss, self.record_clip_scales())

    def record_clip_scales(self) -> Callable[[dict], torch.Tensor] | None:
        """Under DP, each record's clipping norm as a share of `privacy.max_grad_norm` (TrainingView.clip_scales);
        None: every record is clipped to the full norm."""
        return None

    @abstractmethod
    def example_losses(self, model: nn.Module, examples: Sequence[dict]) -> list[float]:
        """Each training-encoded example's loss (for the membership audit)."""

    @abstractmethod
    def fingerprint(self, frame: pd.DataFrame) -> str:
        """SHA-256 of the records a site trains on: the key of its privacy ledger."""

    @abstractmethod
    def evaluate(self, model: nn.Module, examples: list[dict], per_label: bool = False) -> dict[str, float]:
        """Metrics (including ``loss``) of ``model`` on encoded examples; ``per_label``: also each label's
        recall where the task has labels (a site's validation split, for the report's fairness section)."""

    @abstractmethod
    def baseline(self, examples: list[dict]) -> dict[str, float]:
        """Metrics of a trivial predictor, to show the model learned something."""


_TASKS: dict[str, type[Task]] = {}


def length_sorted_batches(examples: Sequence[dict], size: int) -> list[list[int]]:
    """Batches of ``size`` example indices, shortest inputs first: each batch is padded to its own longest
    input, so evaluating in length order pads far less (the default run's central evaluation: 2.6 s to 1.6 s).
    Callers put each result back at its index, so the order examples were given in is kept."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    return [order[start:start + size] for start in range(0, len(order), size)]


def register_task(name: str, cls: type[Task]) -> None:
    if name in _TASKS and _TASKS[name] is not cls:
        raise ValueError(f"task {name!r} is already registered to {_TASKS[name].__name__}")
    cls.name = name
    _TASKS[name] = cls


def task_names() -> tuple[str, ...]:
    return tuple(sorted(_TASKS))


def task_class(config: ExperimentConfig) -> type[Task]:
    """The class of ``config``'s task, after it has checked the settings (ConfigError if they do not suit it)."""
    cls = task_named(config.task)
    cls.check_config(config)
    return cls


def task_named(name: str) -> type[Task]:
    """The task class registered as ``name`` (e.g. the ``task`` an export manifest records)."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(f"`task` {name!r} is not registered; known: {sorted(_TASKS)}") from None


def get_task(config: ExperimentConfig, labels: Sequence[str], **options: Any) -> Task:
    """The task of ``config`` for ``labels``; ``options``: the task's own constructor options (e.g. QA's
    ``max_answer_tokens`` at prediction time)."""
    return task_class(config)(config, labels, **options)


def federation_labels(config: ExperimentConfig) -> list[str]:
    """The label list every participant uses: configured, or inferred from the simulated dataset."""
    task = task_class(config)
    if not task.needs_labels:
        return []  # e.g. extractive QA points to spans: there is no label list
    if config.data.labels:
        return list(config.data.labels)
    if config.data.source == "synthetic" or config.data.path:
        return load_federated_data(config.data, config.federation.num_sites, task.records).labels
    raise ConfigError("`data.labels` must list the labels when sites hold their own data")
