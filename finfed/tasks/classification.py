"""Sentence classification (financial sentiment by default)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch import nn

from finfed.config import ExperimentConfig, TrainSettings
from finfed.constants import MAX_SHARED_LABELS
from finfed.data.loading import normalise_examples, read_table
from finfed.data.partition import RecordFormat
from finfed.data.synthetic_news import generate_news
from finfed.errors import ConfigError
from finfed.models.architectures import resolve_pooling
from finfed.models.backbone import load_encoder
from finfed.models.devices import on_model_device
from finfed.models.fixed_features import (
    FEATURES,
    FeatureCache,
    HeadOnFeatures,
    features_fit,
    pooled_features,
)
from finfed.models.hf_pooled_classifier import HEAD_NAME, FinfedPooledClassifier
from finfed.privacy.ledger import dataset_fingerprint
from finfed.tasks.base import Explainable, Task, TrainingView, length_sorted_batches
from finfed.tasks.classification_metrics import (
    accuracy,
    macro_f1,
    majority_accuracy,
    recall_per_label,
    share_gap_per_label,
)


def pad_batch(items: Sequence[dict], keys: Sequence[str], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad token lists to the longest in the batch."""
    width = max(len(item["input_ids"]) for item in items)
    batch = {}
    for key in keys:
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([item[key] + [fill] * (width - len(item[key])) for item in items])
    return batch


def _collate_features(items: Sequence[dict]) -> dict[str, torch.Tensor]:
    return {FEATURES: torch.stack([item[FEATURES] for item in items]),
            "labels": torch.tensor([item["label"] for item in items])}


RECALL_PREFIX = "recall_"  # a site reports it as constants.EVAL_RECALL_PREFIX + index (finfed/site/rounds.py)
SHARE_GAP_PREFIX = "share_gap_"  # constants.EVAL_SHARE_GAP_PREFIX + index, sent only if the site opts in

SENTENCES = RecordFormat(read_file=read_table, normalise=normalise_examples, generate=generate_news,
                         synthetic_name="synthetic financial news", synthetic_size=3000, labelled=True,
                         columns=lambda settings: (settings.text_column, settings.label_column))


class ClassificationTask(Task):
    metric_names = ("accuracy", "macro_f1", "loss")
    head_name = HEAD_NAME
    baseline_description = "the majority class"
    records = SENTENCES
    default_max_length = 64
    synthetic_description = "financial-news sentences"
    synthetic_dataset = "synthetic"
    pipeline_task = "text-classification"
    export_code = "`hf_pooled_classifier.py` (the mean-pooling classifier architecture)"
    pipeline_example = 'pipe("Cedar Foods raised its outlook for the full year.", truncation=True)'
    pipeline_arguments = ", top_k=None"
    predict_usage = "give it texts to label (no --question/--context)"

    def __init__(self, config, labels) -> None:
        super().__init__(config, labels)
        self.criterion = nn.CrossEntropyLoss(reduction=self.loss_reduction)
        self.class_weights = _class_weights(config.train, self.labels)
        # A head-only model's pooled features, kept across rounds (finfed.models.fixed_features)
        self._training_features, self._evaluation_features = FeatureCache(), FeatureCache()

    @classmethod
    def check_config(cls, config: ExperimentConfig) -> None:
        if config.data.labels:  # else the labels come from the data: checked when the task is built
            _class_weights(config.train, config.data.labels)

    def build_base_model(self) -> nn.Module:
        settings = self.config.model
        encoder = load_encoder(settings.backbone)
        with torch.random.fork_rng():
            torch.manual_seed(self.config.lora.init_seed)  # same initial head everywhere
            pooling = resolve_pooling(settings.pooling, encoder.config.model_type)
            return FinfedPooledClassifier.on_encoder(encoder, self.labels, pooling, settings.head_dropout)

    @staticmethod
    def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = on_model_device(model, batch)
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def encode(self, frame: pd.DataFrame, tokenizer: Any) -> list[dict]:
        encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=self.max_length)
        index = {label: i for i, label in enumerate(self.labels)}
        return [{"input_ids": ids, "attention_mask": mask, "label": index[label]}
                for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], frame["label"])]

    def collate(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = pad_batch(items, ("input_ids", "attention_mask"))
        batch["labels"] = torch.tensor([item["label"] for item in items])
        return batch

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = on_model_device(model, batch)
        return self._training_loss(self.logits(model, batch), batch["labels"])

    def record_clip_scales(self) -> Callable[[dict], torch.Tensor] | None:
        """Under DP, each record's clipping norm as a share of `privacy.max_grad_norm`: its label's weight over
        the largest weight (None without weights). With the loss weights this makes a record's clipped
        gradient its label's share of one clipped at the largest weight, so the weights act under DP as
        without it, whether or not a record is clipped, and no record exceeds the clipping norm."""
        if self.class_weights is None:
            return None
        shares = self.class_weights / self.class_weights.max()
        return lambda batch: shares[batch["labels"].cpu()]

    def _training_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, each record's scaled by its own label's weight (`train.class_weights`). Never
        normalised by the batch's weights: that sum would tie a record's gradient to the other records drawn."""
        if self.class_weights is None:
            return self.criterion(logits, labels)
        per_record = nn.functional.cross_entropy(logits, labels, reduction="none")
        weighted = self.class_weights.to(per_record.device)[labels] * per_record
        return weighted.mean() if self.loss_reduction == "mean" else weighted.sum()

    def training_view(self, model: nn.Module, examples: Sequence[dict]) -> TrainingView:
        """A head-only model trains its head on its records' pooled features, computed once and kept while
        they stay the same (the same DP-SGD: finfed.models.fixed_features); any other model, or too many
        records to keep their features, trains as a whole on the encoded records."""
        if not features_fit(model, len(examples)):
            return super().training_view(model, examples)
        features = self._training_features.features(model, examples, lambda: self._pooled(model, examples))
        # Each keeps its token list (a reference, not a copy): the training loop groups a batch's records by
        # length, and must group them as it would the encoded records (head dropout falls on the same parts).
        items = [{FEATURES: features[i], "label": item["label"], "input_ids": item["input_ids"]}
                 for i, item in enumerate(examples)]
        return TrainingView(HeadOnFeatures(model), items, _collate_features, self._feature_loss,
                            self.record_clip_scales())

    def _pooled(self, model: nn.Module, examples: Sequence[dict]) -> torch.Tensor:
        batches = length_sorted_batches(examples, self.config.train.eval_batch_size)
        return pooled_features(model, examples, batches, self.collate)

    def _feature_loss(self, head: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = on_model_device(head, batch)
        return self._training_loss(head(batch[FEATURES]), batch["labels"])

    @torch.inference_mode()
    def ordered_logits(self, model: nn.Module, examples: Sequence[dict]) -> torch.Tensor:
        """Each example's logits (float, on the CPU), in the order given. A head-only model's come from its
        examples' pooled features, computed once and kept while they stay the same (a head-only run's
        evaluations then cost the head alone)."""
        model.eval()
        if features_fit(model, len(examples)):
            features = self._evaluation_features.features(model, examples, lambda: self._pooled(model, examples))
            return HeadOnFeatures(model).eval()(features).float().cpu()
        logits = torch.empty(len(examples), len(self.labels))
        for indices in length_sorted_batches(examples, self.config.train.eval_batch_size):
            logits[indices] = self.logits(model, self.collate([examples[i] for i in indices])).float().cpu()
        return logits

    def probabilities(self, model: nn.Module, examples: Sequence[dict]) -> torch.Tensor:
        return torch.softmax(self.ordered_logits(model, examples), dim=-1)

    def example_losses(self, model: nn.Module, examples: Sequence[dict]) -> list[float]:
        targets = torch.tensor([item["label"] for item in examples], dtype=torch.long)
        return nn.functional.cross_entropy(self.ordered_logits(model, examples), targets, reduction="none").tolist()

    def fingerprint(self, frame: pd.DataFrame) -> str:
        return dataset_fingerprint(frame["text"], frame["label"])

    def evaluate(self, model: nn.Module, examples: list[dict], per_label: bool = False) -> dict[str, float]:
        probs = self.probabilities(model, examples)
        y_true = [item["label"] for item in examples]
        y_pred = probs.argmax(dim=-1).tolist()
        targets = torch.tensor(y_true)
        loss = nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), targets).item() if y_true else 0.0
        scores = {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, len(self.labels)),
                  "loss": loss}
        if per_label:  # a site's validation split, by label index: recall (labels absent there left out) and
            labels = min(len(self.labels), MAX_SHARED_LABELS)  # the predicted minus the true share (every label)
            scores.update({f"{RECALL_PREFIX}{i}": r for i, r in recall_per_label(y_true, y_pred, labels).items()})
            scores.update({f"{SHARE_GAP_PREFIX}{i}": g for i, g in share_gap_per_label(y_true, y_pred, labels).items()})
        return scores

    def baseline(self, examples: list[dict]) -> dict[str, float]:
        y_true = [item["label"] for item in examples]
        majority = max(set(y_true), key=y_true.count) if y_true else 0
        return {"accuracy": majority_accuracy(y_true),
                "macro_f1": macro_f1(y_true, [majority] * len(y_true), len(self.labels))}

    def label_texts(self, model: nn.Module, tokenizer: Any, texts: Sequence[str]) -> list[dict]:
        frame = pd.DataFrame({"text": list(texts), "label": self.labels[0]})  # label unused for prediction
        probs = self.probabilities(model, self.encode(frame, tokenizer))
        results = []
        for text, row in zip(texts, probs.tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            results.append({"text": text, "label": self.labels[best], "probabilities": dict(zip(self.labels, row))})
        return results

    @classmethod
    def prediction_columns(cls, config: ExperimentConfig) -> dict[str, str]:
        return {"text": config.data.text_column}

    def predict_rows(self, model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, str]], *,
                     max_answer_tokens: int | None = None) -> list[dict]:
        if max_answer_tokens:
            raise ConfigError(f"--max-answer-tokens is for question answering; a {self.name!r} model labels texts")
        return self.label_texts(model, tokenizer, [row["text"] for row in rows])

    def explainable_text(self, model: nn.Module, tokenizer: Any, text: str) -> Explainable:
        """The predicted label's logit, explained over the words of ``text`` (truncated as for prediction)."""
        [prediction] = self.label_texts(model, tokenizer, [text])
        encoded = tokenizer(text, truncation=True, max_length=self.max_length, return_offsets_mapping=True,
                            return_special_tokens_mask=True)
        spans = [None if special or start == end else (start, end) for (start, end), special in
                 zip(encoded["offset_mapping"], encoded["special_tokens_mask"])]
        inputs = {key: torch.tensor([encoded[key]]) for key in ("input_ids", "attention_mask")}
        target = self.labels.index(prediction["label"])
        return Explainable(inputs=inputs, score=lambda output: output.logits[:, target],
                           target=f"the logit of {prediction['label']!r}", text=text, spans=spans,
                           prediction=prediction)


def _class_weights(settings: TrainSettings, labels: Sequence[str]) -> torch.Tensor | None:
    """Each label's loss weight, in the model's output order; None when every weight is 1."""
    unknown = sorted(set(settings.class_weights) - set(labels))
    if unknown:
        raise ConfigError(f"`train.class_weights` names {unknown}, which are not among the run's labels "
                          f"{list(labels)}")
    if not settings.class_weights:
        return None
    return torch.tensor([settings.weight_of(label) for label in labels], dtype=torch.float32)
