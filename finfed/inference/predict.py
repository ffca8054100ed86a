"""Using a finished run's global model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from finfed.errors import ConfigError
from finfed.runs.model_store import load_run_model


def predict_texts(run_dir: str | Path, texts: list[str]) -> list[dict]:
    """Each text's label and class probabilities under the run's global model."""
    task, model, tokenizer = load_run_model(run_dir)
    if task.config.task != "classification":
        raise ConfigError(f"run {run_dir} trained a {task.config.task!r} model; ask it with --question and "
                          "--context")
    frame = pd.DataFrame({"text": texts, "label": task.labels[0]})  # label unused for prediction
    probs = task.probabilities(model, task.encode(frame, tokenizer))
    results = []
    for text, row in zip(texts, probs.tolist()):
        best = max(range(len(row)), key=row.__getitem__)
        results.append({"text": text, "label": task.labels[best],
                        "probabilities": dict(zip(task.labels, row))})
    return results


def answer_question(run_dir: str | Path, question: str, context: str,
                    max_answer_tokens: int | None = None) -> dict:
    """The answer span of ``question`` in ``context`` under a QA run's global model.

    Returns the answer text, its score (p(start) * p(end) in the best window) and its
    character offsets in ``context`` (``context[start:end] == answer``).
    """
    task, model, tokenizer = load_run_model(run_dir)
    if task.config.task != "qa":
        raise ConfigError(f"run {run_dir} trained a {task.config.task!r} model; --question/--context need a "
                          "'qa' run (use texts instead)")
    if max_answer_tokens:
        task.config = dataclasses.replace(task.config, qa=dataclasses.replace(task.config.qa,
                                                                              max_answer_tokens=max_answer_tokens))
    frame = pd.DataFrame([{"id": "question", "question": question, "context": context,
                           "answer_texts": [context[:1]], "answer_starts": [0]}])  # gold unused
    [answer] = task.answers(model, task.encode_for_evaluation(frame, tokenizer))
    return {"question": question, "answer": answer.text, "score": answer.score, "start": answer.start,
            "end": answer.end}
