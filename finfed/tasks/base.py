"""The interface every task implements, and the registry that finds one by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn

from finfed.config import ExperimentConfig
from finfed.data.partition import load_federated_data
from finfed.errors import ConfigError
from finfed.models.adapters import add_adapters


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

    def __init__(self, config: ExperimentConfig, labels: Sequence[str]) -> None:
        self.config = config
        self.labels = list(labels)

    @abstractmethod
    def build_base_model(self) -> nn.Module:
        """The backbone with its task head, before adapters."""

    def build_model(self) -> nn.Module:
        """The backbone with adapters and task head, trainable tensors marked."""
        return add_adapters(self.build_base_model(), self.config.lora, head=self.head_name)

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

    @abstractmethod
    def example_losses(self, model: nn.Module, examples: Sequence[dict]) -> list[float]:
        """Each training-encoded example's loss (for the membership audit)."""

    @abstractmethod
    def fingerprint(self, frame: pd.DataFrame) -> str:
        """SHA-256 of the records a site trains on: the key of its privacy ledger."""

    @abstractmethod
    def evaluate(self, model: nn.Module, examples: list[dict]) -> dict[str, float]:
        """Metrics (including ``loss``) of ``model`` on encoded examples."""

    @abstractmethod
    def baseline(self, examples: list[dict]) -> dict[str, float]:
        """Metrics of a trivial predictor, to show the model learned something."""


_TASKS: dict[str, type[Task]] = {}


def register_task(name: str, cls: type[Task]) -> None:
    if name in _TASKS and _TASKS[name] is not cls:
        raise ValueError(f"task {name!r} is already registered to {_TASKS[name].__name__}")
    _TASKS[name] = cls


def _task_class(name: str) -> type[Task]:
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigError(f"`task` {name!r} is not registered; known: {sorted(_TASKS)}") from None


def get_task(config: ExperimentConfig, labels: Sequence[str]) -> Task:
    return _task_class(config.task)(config, labels)


def federation_labels(config: ExperimentConfig) -> list[str]:
    """The label list every participant uses: configured, or inferred from the simulated dataset."""
    if not _task_class(config.task).needs_labels:
        return []  # e.g. extractive QA points to spans: there is no label list
    if config.data.labels:
        return list(config.data.labels)
    if config.data.source == "synthetic" or config.data.path:
        return load_federated_data(config.data, config.federation.num_sites).labels
    raise ConfigError("`data.labels` must list the labels when sites hold their own data")
