"""Extractive question answering: point to the answer span of a question in a passage.

The model is a stock ``AutoModelForQuestionAnswering`` (encoder + ``qa_outputs``
start/end head) with LoRA adapters, so a merged export is a plain ``transformers``
model. See :mod:`finfed.tasks.qa_windows` for windowing and the privacy unit.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn

from finfed.config import ExperimentConfig
from finfed.data.partition import RecordFormat
from finfed.data.qa_records import normalise_qa_records, read_qa_file
from finfed.data.synthetic_filings import VARIANTS as SYNTHETIC_VARIANTS
from finfed.data.synthetic_filings import generate_filings_qa
from finfed.errors import ConfigError
from finfed.models import hf_qa_pipeline
from finfed.models.backbone import load_qa_model, qa_head_name
from finfed.models.devices import on_model_device
from finfed.privacy.ledger import dataset_fingerprint
from finfed.tasks.base import Explainable, Task
from finfed.tasks.classification import pad_batch
from finfed.tasks.qa_decoding import Answer, decode_answer, ranked_answers
from finfed.tasks.qa_metrics import squad_scores
from finfed.tasks.qa_windows import Window, record_windows, training_windows

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
logger = logging.getLogger(__name__)


# Test splits and audit hold-backs take whole contexts: questions about a passage seen in training would
# flatter the test score (SQuAD splits by article for the same reason).
QA_RECORDS = RecordFormat(read_file=read_qa_file, normalise=normalise_qa_records, generate=generate_filings_qa,
                          synthetic_name="synthetic financial filings QA", synthetic_size=600, labelled=False,
                          group_column="context", synthetic_variants=SYNTHETIC_VARIANTS)

PROTECTED_UNIT = (
    "For question answering the protected unit is one record: a question, its context and its answer. "
    "A context longer than one model window is cut into overlapping windows, but training uses exactly one "
    "window per record (the first that holds the answer, chosen from that record alone), so a record joins "
    "each DP-SGD step at most once and contributes at most one clipped gradient to it; records whose "
    "answer fits no window are left out of training. Several questions about the same passage are "
    "separate records: the passage itself is protected only as far as each of its records is.")


def _token_fields(window: Window) -> dict[str, list[int]]:
    """The model inputs of ``window``: token type ids only where the tokenizer gives them."""
    return {key: getattr(window, key) for key in TOKEN_KEYS if getattr(window, key) is not None}


class QuestionAnsweringTask(Task):
    metric_names = ("exact_match", "f1", "loss")
    needs_labels = False
    baseline_description = "the context's first words, as many as the median gold answer has"
    records = QA_RECORDS
    default_max_length = 192
    synthetic_description = "financial passages and questions"
    synthetic_dataset = "synthetic-qa"
    protected_unit = PROTECTED_UNIT
    pipeline_task = hf_qa_pipeline.PIPELINE_TASK
    export_code = "`hf_qa_pipeline.py` (extractive QA pipeline: transformers 5 has none)"
    pipeline_example = 'pipe(question="Who raised its outlook?", context="Cedar Foods raised its outlook.")'
    predict_usage = "ask it with --question and --context"

    def __init__(self, config: ExperimentConfig, labels: Sequence[str], *,
                 max_answer_tokens: int | None = None) -> None:
        """``max_answer_tokens``: the longest answer decoded, if not the run's `qa.max_answer_tokens`."""
        super().__init__(config, labels)
        self.max_answer_tokens = max_answer_tokens or config.qa.max_answer_tokens

    @classmethod
    def check_config(cls, config: ExperimentConfig) -> None:
        if config.train.class_weights:
            raise ConfigError("`train.class_weights` is for classification; `task` 'qa' has no labels to weigh: "
                              "remove it")
        if config.data.partitioner == "dirichlet":
            raise ConfigError("`data.partitioner` 'dirichlet' splits by label, and `task` 'qa' has no labels; "
                              "use 'iid' or 'column'")
        if 0 < config.data.max_length <= config.qa.doc_stride + 16:
            raise ConfigError(f"`qa.doc_stride` ({config.qa.doc_stride}) must be well below `data.max_length` "
                              f"({config.data.max_length}) so that windows advance")

    def build_base_model(self) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(self.config.lora.init_seed)  # same initial head everywhere
            model = load_qa_model(self.config.model.backbone)
            if self.config.qa.head_init_std:
                head = getattr(model, self.head_of(model))
                with torch.no_grad():
                    head.weight.normal_(0.0, self.config.qa.head_init_std)
                    if head.bias is not None:
                        head.bias.zero_()
            return model

    def head_of(self, base: nn.Module) -> str:
        return qa_head_name(base)

    # ------------------------------------------------------------------ encoding
    def windows(self, frame: pd.DataFrame, tokenizer: Any) -> list[Window]:
        return record_windows(frame.reset_index(drop=True), tokenizer, max_length=self.max_length,
                              stride=self.config.qa.doc_stride)

    def encode(self, frame: pd.DataFrame, tokenizer: Any) -> list[dict]:
        """Training samples: exactly one window per record (the privacy unit), records without one left out."""
        frame = frame.reset_index(drop=True)
        chosen, unanswerable = training_windows(self.windows(frame, tokenizer))
        if unanswerable:
            logger.info(f"{len(unanswerable)} of {len(frame)} QA record(s) left out of training: no window of "
                        f"{self.max_length} tokens holds the whole answer")
        return [{**_token_fields(w), "start": w.start, "end": w.end, "record": w.record,
                 "id": str(frame["id"].iloc[w.record])} for w in chosen]

    def encode_for_evaluation(self, frame: pd.DataFrame, tokenizer: Any) -> list[dict]:
        """Every window of every record, each carrying its record's context and gold answers."""
        frame = frame.reset_index(drop=True)
        records = [{"id": str(row["id"]), "context": row["context"], "answers": list(row["answer_texts"])}
                   for _, row in frame.iterrows()]
        return [{**_token_fields(w), "start": w.start, "end": w.end, "record": w.record,
                 "window": w, "meta": records[w.record]} for w in self.windows(frame, tokenizer)]

    def collate(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = pad_batch(items, [key for key in TOKEN_KEYS if key in items[0]])
        batch["start_positions"] = torch.tensor([item["start"] for item in items])
        batch["end_positions"] = torch.tensor([item["end"] for item in items])
        return batch

    # ------------------------------------------------------------------ model use
    @staticmethod
    def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = on_model_device(model, batch)
        output = model(**{k: batch[k] for k in TOKEN_KEYS if k in batch})
        return output.start_logits, output.end_logits

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = on_model_device(model, batch)
        start, end = self.logits(model, batch)
        criterion = nn.functional.cross_entropy
        return (criterion(start, batch["start_positions"], reduction=self.loss_reduction)
                + criterion(end, batch["end_positions"], reduction=self.loss_reduction)) / 2

    @torch.no_grad()
    def example_losses(self, model: nn.Module, examples: Sequence[dict]) -> list[float]:
        losses = []
        for batch in self._batches(model, examples):
            batch = on_model_device(model, batch)
            start, end = self.logits(model, batch)
            losses += ((nn.functional.cross_entropy(start, batch["start_positions"], reduction="none")
                        + nn.functional.cross_entropy(end, batch["end_positions"], reduction="none")) / 2).tolist()
        return losses

    def _batches(self, model: nn.Module, examples: Sequence[dict]):
        model.eval()
        size = self.config.train.eval_batch_size
        for begin in range(0, len(examples), size):
            yield self.collate(examples[begin:begin + size])

    @torch.no_grad()
    def _window_logits(self, model: nn.Module, examples: Sequence[dict]) -> tuple[list, list]:
        """Start and end logits of every window, each cut to the window's own length (no padding)."""
        starts, ends = [], []
        for begin, batch in zip(range(0, len(examples), self.config.train.eval_batch_size),
                                self._batches(model, examples)):
            start, end = self.logits(model, batch)
            start, end = start.float().cpu(), end.float().cpu()
            for offset, (s, e) in enumerate(zip(start, end)):
                length = len(examples[begin + offset]["input_ids"])
                starts.append(s[:length])
                ends.append(e[:length])
        return starts, ends

    def _decode(self, examples: Sequence[dict], starts: list, ends: list) -> list[Answer]:
        by_record: dict[int, list[int]] = {}
        for index, item in enumerate(examples):
            by_record.setdefault(item["record"], []).append(index)
        limit = self.max_answer_tokens
        return [decode_answer(examples[idx[0]]["meta"]["context"], [examples[i]["window"] for i in idx],
                              [starts[i] for i in idx], [ends[i] for i in idx], limit)
                for _, idx in sorted(by_record.items())]

    def answers(self, model: nn.Module, examples: Sequence[dict]) -> list[Answer]:
        """One decoded answer per record, in record order."""
        return self._decode(examples, *self._window_logits(model, examples))

    def evaluate(self, model: nn.Module, examples: list[dict], per_label: bool = False) -> dict[str, float]:
        # One forward pass serves both the decoded answers and the loss of the windows holding one.
        starts, ends = self._window_logits(model, examples)
        predictions = [answer.text for answer in self._decode(examples, starts, ends)]
        golds = [examples[idx]["meta"]["answers"] for idx in self._first_window_of_each_record(examples)]
        losses = [(nn.functional.cross_entropy(s, torch.tensor(item["start"]))
                   + nn.functional.cross_entropy(e, torch.tensor(item["end"]))).item() / 2
                  for item, s, e in zip(examples, starts, ends) if item["window"].holds_answer]
        return {**squad_scores(predictions, golds), "loss": sum(losses) / len(losses) if losses else 0.0}

    @staticmethod
    def _first_window_of_each_record(examples: Sequence[dict]) -> list[int]:
        first: dict[int, int] = {}
        for index, item in enumerate(examples):
            first.setdefault(item["record"], index)
        return [first[r] for r in sorted(first)]

    def baseline(self, examples: list[dict]) -> dict[str, float]:
        records = [examples[i]["meta"] for i in self._first_window_of_each_record(examples)]
        if not records:
            return {"exact_match": 0.0, "f1": 0.0}
        words = max(1, round(statistics.median(len(r["answers"][0].split()) for r in records)))
        predictions = [" ".join(r["context"].split()[:words]) for r in records]
        return squad_scores(predictions, [r["answers"] for r in records])

    def fingerprint(self, frame: pd.DataFrame) -> str:
        answers = [json.dumps([list(t), [int(s) for s in starts]])
                   for t, starts in zip(frame["answer_texts"], frame["answer_starts"])]
        return dataset_fingerprint((frame["question"] + "\x1f" + frame["context"]).tolist(), answers)

    # ------------------------------------------------------------------ export and prediction
    def export_settings(self, max_length: int) -> dict[str, int]:
        """The shipped pipeline's defaults: the windows and answer limit the model was trained and evaluated with."""
        return {"max_seq_len": max_length, "doc_stride": self.config.qa.doc_stride,
                "max_answer_len": self.config.qa.max_answer_tokens}

    def ship_export_code(self, model: Any, settings: dict[str, int] | None, folder: Path) -> None:
        """Name the shipped QA pipeline in the config and copy its one source file beside the weights."""
        source = Path(hf_qa_pipeline.__file__)
        model.config.custom_pipelines = {self.pipeline_task: {
            "impl": f"{source.stem}.{hf_qa_pipeline.ExtractiveQAPipeline.__name__}",
            "pt": ["AutoModelForQuestionAnswering"], "type": "text"}}
        model.config.finfed_qa = dict(settings or {})
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / source.name)

    def answer_question(self, model: nn.Module, tokenizer: Any, question: str, context: str, *,
                        max_answer_tokens: int | None = None) -> Answer:
        [answer] = self._answers(model, tokenizer, [{"question": question, "context": context}], max_answer_tokens)
        return answer

    def _answers(self, model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, str]],
                 max_answer_tokens: int | None) -> list[Answer]:
        decoder = self
        if max_answer_tokens:  # a decoder of its own: this task's settings stay the run's
            decoder = QuestionAnsweringTask(self.config, self.labels, max_answer_tokens=max_answer_tokens)
        frame = pd.DataFrame([{"id": str(i), "question": row["question"], "context": row["context"],
                               "answer_texts": [row["context"][:1]], "answer_starts": [0]}  # gold unused
                              for i, row in enumerate(rows)])
        answers = decoder.answers(model, decoder.encode_for_evaluation(frame, tokenizer))
        if len(answers) != len(rows):  # a record without a window would shift every later answer
            raise ConfigError(f"{len(rows) - len(answers)} of {len(rows)} question(s) gave the model no window "
                              "to read (an empty question or passage?)")
        return answers

    @classmethod
    def prediction_columns(cls, config: ExperimentConfig) -> dict[str, str]:
        return {"question": config.data.question_column, "context": config.data.context_column}

    def predict_rows(self, model: nn.Module, tokenizer: Any, rows: Sequence[dict[str, str]], *,
                     max_answer_tokens: int | None = None) -> list[dict]:
        answers = self._answers(model, tokenizer, rows, max_answer_tokens)
        return [{"question": row["question"], "answer": answer.text, "score": answer.score, "start": answer.start,
                 "end": answer.end} for row, answer in zip(rows, answers)]

    def explainable_answer(self, model: nn.Module, tokenizer: Any, question: str, context: str, *,
                           max_answer_tokens: int | None = None, runners_up: int = 3) -> Explainable:
        """The answer span's start + end logit, explained over the window that holds it; with the runner-up spans."""
        limit = max_answer_tokens or self.max_answer_tokens
        frame = pd.DataFrame([{"id": "question", "question": question, "context": context,
                               "answer_texts": [context[:1]], "answer_starts": [0]}])  # gold unused
        examples = self.encode_for_evaluation(frame, tokenizer)
        starts, ends = self._window_logits(model, examples)
        windows = [item["window"] for item in examples]
        ranked = ranked_answers(context, windows, starts, ends, limit, runners_up + 1)
        if not ranked:
            raise ConfigError("the context left no room in the model's window: nothing to explain")
        best, window = ranked[0], windows[ranked[0].window]
        inputs = {key: torch.tensor([getattr(window, key)]) for key in TOKEN_KEYS
                  if getattr(window, key) is not None}  # no token type ids: the tokenizer gives none
        first, last = best.first, best.last
        prediction = {"question": question, **_answer_fields(best.answer),
                      "runners_up": [_answer_fields(span.answer) for span in ranked[1:]]}
        return Explainable(inputs=inputs,
                           score=lambda output: output.start_logits[:, first] + output.end_logits[:, last],
                           target="the answer span's start + end logit", text=context, spans=list(window.offsets),
                           prediction=prediction)


def _answer_fields(answer: Answer) -> dict[str, Any]:
    return {"answer": answer.text, "score": answer.score, "start": answer.start, "end": answer.end}
