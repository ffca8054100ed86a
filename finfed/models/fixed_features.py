"""A head-only classifier trained on its fixed backbone's features, computed once and kept.

Under ``lora.method: head`` nothing below the head trains, and the backbone runs as at inference (no
dropout: finfed.training.local), so a record's pooled features are the same at every step of a round,
and in every round while the coordinator sends the same fixed adapters (it keeps them fixed:
finfed.coordinator). Recomputing them for every sampled batch is the whole cost of a head-only round.
Here they are computed in one pass over the site's records and kept, in the process, while the model,
its fixed adapters' values and the records are the same; DP-SGD runs on the head alone.

The mechanism is unchanged: the same records, the same Poisson sampling, per-sample gradients of the
same head tensors clipped to the same norm, the same noise and the same accounting. Only the
backbone's forward passes are no longer repeated (tests/test_fixed_features.py compares both ways).
"""

from __future__ import annotations

import weakref
from typing import Callable, Sequence

import torch
from torch import nn

from finfed.models.adapters import fixed_tensors, tensors_digest
from finfed.models.devices import model_device, on_model_device
from finfed.models.hf_pooled_classifier import pool

FEATURES = "features"
# Features kept for one set of records at most: 256 MiB is 170k records of MiniLM (384 values each) or 16k
# of a 4,096-wide decoder. A larger set runs the whole model at each step, as other methods do.
MAX_FEATURE_BYTES = 256 * 2**20


def has_fixed_backbone(model: nn.Module) -> bool:
    """True for a head-only model (``lora.method: head``): the mark finfed.models.adapters leaves on it."""
    return bool(fixed_tensors(model))


def features_fit(model: nn.Module, num_examples: int) -> bool:
    """Whether a head-only model's features for ``num_examples`` records may be computed and kept at once."""
    if not has_fixed_backbone(model):
        return False
    return num_examples * model.get_base_model().encoder.config.hidden_size * 4 <= MAX_FEATURE_BYTES


class HeadOnFeatures(nn.Module):
    """The trainable end of a pooled classifier (dropout, then the head), fed precomputed pooled features.

    It holds the model's own modules, so training it trains the model's head in place; the head keeps
    its name under peft's ``modules_to_save``, so the optimizer gives it the head's learning rate."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        classifier = model.get_base_model()
        self.dropout, self.classifier = classifier.dropout, classifier.classifier

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))


@torch.no_grad()
def pooled_features(model: nn.Module, examples: Sequence[dict], batches: list[list[int]], collate) -> torch.Tensor:
    """Every example's pooled backbone output (float32, on the model's device), in the order given.

    ``batches`` cover every index once (length-sorted: less padding). The backbone runs in eval mode,
    as the uncached head-only round runs it; no random number is drawn."""
    classifier = model.get_base_model()
    encoder, pooling = classifier.encoder, classifier.config.pooling
    was_training = encoder.training
    encoder.eval()
    try:
        features = torch.empty((len(examples), encoder.config.hidden_size), device=model_device(model))
        for indices in batches:
            batch = on_model_device(model, collate([examples[i] for i in indices]))
            states = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            pooled = pool(states, batch["attention_mask"], pooling)
            features[torch.as_tensor(indices, device=features.device)] = pooled.float()
        return features
    finally:
        encoder.train(was_training)


def fixed_tensors_digest(model: nn.Module) -> str:
    """Hash of the fixed adapters' current values: the features depend on them (a warm start's are nonzero)."""
    fixed = fixed_tensors(model)
    return tensors_digest(model, lambda name, _: name in fixed)


class FeatureCache:
    """One site's pooled features, reused by later rounds in the same process while they would come out
    the same: the same model object (its backbone never changes), the same fixed adapters' values, the same
    records. Anything else recomputes them. A deployed site starts a process per message: it computes them
    once per round."""

    def __init__(self) -> None:
        self._model: Callable[[], nn.Module | None] = lambda: None
        self._examples: Sequence[dict] | None = None
        self._digest = ""
        self._features: torch.Tensor | None = None

    def features(self, model: nn.Module, examples: Sequence[dict], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        digest = fixed_tensors_digest(model)
        if not (self._model() is model and self._examples is examples and self._digest == digest):
            self._features = None  # the old features go before the new ones are computed
            self._features = compute()
            self._model, self._examples, self._digest = weakref.ref(model), examples, digest
        return self._features
