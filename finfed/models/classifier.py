"""A sentence classifier: pretrained encoder, pooled token states, linear head.

Mean pooling is the default because sentence-embedding backbones (MiniLM) were
trained with it: their [CLS] pooler is untrained for the task, and a head on it
predicted one class for everything in our trials, where mean pooling learned.
"""

from __future__ import annotations

import torch
from torch import nn

from finfed.models.hf_pooled_classifier import pool  # one pooling, shared with exports

HEAD_NAME = "classifier"


class PooledClassifier(nn.Module):
    """``encoder`` -> mean (or [CLS]) pooling -> dropout -> ``classifier``."""

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str = "mean",
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        return self.classifier(self.dropout(pool(states, attention_mask, self.pooling)))
