"""Using a finished run's global model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from finfed.models.persistence import load_run_model


def predict_texts(run_dir: str | Path, texts: list[str]) -> list[dict]:
    """Each text's label and class probabilities under the run's global model."""
    task, model, tokenizer = load_run_model(run_dir)
    frame = pd.DataFrame({"text": texts, "label": task.labels[0]})  # label unused for prediction
    probs = task.probabilities(model, task.encode(frame, tokenizer))
    results = []
    for text, row in zip(texts, probs.tolist()):
        best = max(range(len(row)), key=row.__getitem__)
        results.append({"text": text, "label": task.labels[best],
                        "probabilities": dict(zip(task.labels, row))})
    return results
