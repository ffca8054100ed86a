"""Using a finished run's global model."""

from __future__ import annotations

import contextlib
from pathlib import Path

from finfed.errors import ConfigError
from finfed.runs.model_store import load_run_model


def predict_texts(run_dir: str | Path, texts: list[str]) -> list[dict]:
    """Each text's label and class probabilities under the run's global model."""
    task, model, tokenizer = load_run_model(run_dir)
    with _naming_the_run(run_dir):
        return task.label_texts(model, tokenizer, texts)


def answer_question(run_dir: str | Path, question: str, context: str,
                    max_answer_tokens: int | None = None) -> dict:
    """The answer span of ``question`` in ``context`` under a QA run's global model.

    Returns the answer text, its score (p(start) * p(end) in the best window) and its
    character offsets in ``context`` (``context[start:end] == answer``).
    """
    task, model, tokenizer = load_run_model(run_dir)
    with _naming_the_run(run_dir):
        answer = task.answer_question(model, tokenizer, question, context, max_answer_tokens=max_answer_tokens)
    return {"question": question, "answer": answer.text, "score": answer.score, "start": answer.start,
            "end": answer.end}


@contextlib.contextmanager
def _naming_the_run(run_dir: str | Path):
    """A task asked what it cannot answer (a QA run given texts, ...) refuses; say which run."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"run {run_dir}: {exc}") from None
