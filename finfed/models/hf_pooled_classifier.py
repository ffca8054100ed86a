"""finfed's pooled sentence classifier as a ``transformers`` architecture.

``finfed export`` copies this very file beside an exported classifier's weights
(``config.json`` names it in ``auto_map``), so that
``pipeline("text-classification", model=FOLDER, trust_remote_code=True)`` loads
the model with no finfed installed. It must therefore stay self-contained:
it imports only ``torch`` and ``transformers``, never ``finfed``.

The module tree (``encoder``, ``dropout``, ``classifier``) mirrors
``finfed.models.classifier.PooledClassifier`` so that its state dict, and the
PEFT adapter keys trained on it, load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class FinfedPooledClassifierConfig(PretrainedConfig):
    """The backbone's own config (``encoder_config``) plus how its token states are pooled."""

    model_type = "finfed-pooled-classifier"
    _auto_class = "AutoConfig"  # save_pretrained writes auto_map and copies this file

    def __init__(self, encoder_config: dict | None = None, pooling: str = "mean", head_dropout: float = 0.1,
                 **kwargs) -> None:
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.encoder_config = dict(encoder_config or {})
        self.pooling = pooling
        self.head_dropout = head_dropout
        kwargs.setdefault("problem_type", "single_label_classification")  # pipeline: softmax scores
        super().__init__(**kwargs)


class FinfedPooledClassifier(PreTrainedModel):
    """``encoder`` -> mean (or [CLS]) pooling -> dropout -> ``classifier``."""

    config_class = FinfedPooledClassifierConfig
    base_model_prefix = "encoder"
    _auto_class = "AutoModelForSequenceClassification"

    def __init__(self, config: FinfedPooledClassifierConfig) -> None:
        super().__init__(config)
        encoder_config = dict(config.encoder_config)
        encoder_config = AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config)
        self.encoder = AutoModel.from_config(encoder_config)
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(encoder_config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        logits = self.classifier(self.dropout(pool(states, attention_mask, self.config.pooling)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def pool(states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence: the [CLS] state, or the mean over real (unpadded) tokens."""
    if pooling == "cls":
        return states[:, 0]
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
