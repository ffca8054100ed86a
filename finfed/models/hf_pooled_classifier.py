"""finfed's pooled sentence classifier, a ``transformers`` architecture: the one class finfed trains and exports.

Mean pooling is the default because sentence-embedding backbones (MiniLM) were
trained with it: their [CLS] pooler is untrained for the task, and a head on it
predicted one class for everything in our trials, where mean pooling learned.

Training builds it with :meth:`FinfedPooledClassifier.on_encoder` around a
pretrained encoder. ``finfed export`` copies this very file beside an exported classifier's weights
(``config.json`` names it in ``auto_map``), so that
``pipeline("text-classification", model=FOLDER, trust_remote_code=True)`` loads
the model with no finfed installed. It must therefore stay self-contained:
it imports only ``torch`` and ``transformers``, never ``finfed``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

HEAD_NAME = "classifier"  # the head module: trained in full beside the adapters, and sent with them
POOLINGS = ("mean", "cls", "last")


class FinfedPooledClassifierConfig(PretrainedConfig):
    """The backbone's own config (``encoder_config``) plus how its token states are pooled."""

    model_type = "finfed-pooled-classifier"
    _auto_class = "AutoConfig"  # save_pretrained writes auto_map and copies this file

    def __init__(self, encoder_config: dict | None = None, pooling: str = "mean", head_dropout: float = 0.1,
                 **kwargs) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.encoder_config = dict(encoder_config or {})
        self.pooling = pooling
        self.head_dropout = head_dropout
        kwargs.setdefault("problem_type", "single_label_classification")  # pipeline: softmax scores
        super().__init__(**kwargs)


class FinfedPooledClassifier(PreTrainedModel):
    """``encoder`` -> mean ([CLS], or last real token) pooling -> dropout -> ``classifier``.

    The ``encoder`` may be any ``AutoModel`` backbone, a decoder-only one (GPT-2, Llama, ...) too:
    there ``last`` pooling takes the state of the last non-padding token, the only one that has
    seen the whole text, whichever side the tokenizer pads on.
    """

    config_class = FinfedPooledClassifierConfig
    base_model_prefix = "encoder"
    _auto_class = "AutoModelForSequenceClassification"

    def __init__(self, config: FinfedPooledClassifierConfig, encoder: nn.Module | None = None) -> None:
        super().__init__(config)
        if encoder is None:  # loading a saved classifier: its weights come from the checkpoint
            encoder_config = dict(config.encoder_config)
            encoder_config = AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config)
            encoder = AutoModel.from_config(encoder_config)
        self.encoder = encoder
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, config.num_labels)
        self.post_init()

    @classmethod
    def on_encoder(cls, encoder: PreTrainedModel, labels: list[str], pooling: str = "mean",
                   head_dropout: float = 0.1) -> "FinfedPooledClassifier":
        """A new head on a (pretrained) encoder, labelled with ``labels``: where training starts."""
        encoder_config = encoder.config.to_dict()
        encoder_config.pop("_name_or_path", None)  # the trainer's local path means nothing elsewhere
        config = FinfedPooledClassifierConfig(
            encoder_config=encoder_config, pooling=pooling, head_dropout=head_dropout,
            id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
        return cls(config, encoder=encoder)

    def _init_weights(self, module: nn.Module) -> None:
        # The head keeps torch's default Linear initialisation, drawn (under finfed's seed) when it is
        # created; the encoder is pretrained or initialises itself. transformers' default would redraw the head.
        pass

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:  # decoders (and DistilBERT) take none
            inputs["token_type_ids"] = token_type_ids
        states = self.encoder(**inputs).last_hidden_state
        logits = self.classifier(self.dropout(pool(states, attention_mask, self.config.pooling)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def pool(states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence: the [CLS] state, the last real token's, or the mean over real (unpadded) tokens."""
    if pooling == "cls":
        return states[:, 0]
    if pooling == "last":  # the last position the mask keeps: right or left padding alike
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * (positions + 1)).argmax(dim=1)
        return states[torch.arange(states.shape[0], device=states.device), last]
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
