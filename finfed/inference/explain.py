"""Why the global model predicted what it did: Integrated Gradients over the input's words.

`finfed predict RUN TEXT --explain` and the functions here attribute one prediction of a run's
**global model** to its input tokens with Captum's ``LayerIntegratedGradients`` on the model's
word-embedding layer (Sundararajan et al., 2017). No site data is used: only the model and the
text given. What is explained is the task's (:meth:`finfed.tasks.Task.explainable_text`,
:meth:`~finfed.tasks.Task.explainable_answer`): for classification the predicted label's logit,
for QA the answer span's start + end logit (the span's score before the softmax).

The baseline keeps the special tokens ([CLS], [SEP]) and replaces every other token by the
padding token, with the same attention mask. By the completeness axiom the attributions sum to
``f(input) - f(baseline)``; Captum reports the gap of its numerical integral as the convergence
``delta``, and both are shown, so a reader can see how far to trust the numbers (more
``steps``: smaller delta). Token scores are summed into the words of the text (characters
between spaces); tokens not shown (special tokens, a QA question's tokens) are summed into
``other``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch
from captum.attr import LayerIntegratedGradients
from torch import nn

from finfed.errors import ConfigError, FinfedError
from finfed.runs.model_store import load_run_model
from finfed.tasks import Explainable

DEFAULT_STEPS = 50
METHOD = "integrated gradients (Captum LayerIntegratedGradients on the word embeddings)"


def explain_texts(run_dir: str | Path, texts: list[str], *, steps: int = DEFAULT_STEPS) -> list[dict[str, Any]]:
    """Each text's prediction (label, probabilities) and the words that drove it."""
    task, model, tokenizer = load_run_model(run_dir)
    return [attribute(model, tokenizer, _naming(run_dir, task.explainable_text, model, tokenizer, text), steps)
            for text in texts]


def explain_answer(run_dir: str | Path, question: str, context: str, *, max_answer_tokens: int | None = None,
                   runners_up: int = 3, steps: int = DEFAULT_STEPS) -> dict[str, Any]:
    """The answer span (text, score, character offsets), the next-best spans, and the words that drove it."""
    task, model, tokenizer = load_run_model(run_dir)
    item = _naming(run_dir, task.explainable_answer, model, tokenizer, question, context,
                   max_answer_tokens=max_answer_tokens, runners_up=runners_up)
    return attribute(model, tokenizer, item, steps)


def _naming(run_dir: str | Path, method: Any, *args: Any, **kwargs: Any) -> Explainable:
    try:
        return method(*args, **kwargs)
    except ConfigError as exc:  # a task asked what it cannot answer: say which run
        raise ConfigError(f"run {run_dir}: {exc}") from None


# --------------------------------------------------------------------------- attribution

def attribute(model: nn.Module, tokenizer: Any, item: Explainable, steps: int = DEFAULT_STEPS) -> dict[str, Any]:
    """Integrated Gradients of ``item.score`` with respect to the word embeddings of ``item.inputs``."""
    if steps < 2:
        raise ConfigError(f"--explain-steps must be at least 2, got {steps}")
    model.eval()
    inputs = dict(item.inputs)
    input_ids = inputs.pop("input_ids")
    names = list(inputs)

    def forward(ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return item.score(model(input_ids=ids, **dict(zip(names, rest))))

    baseline = baseline_ids(input_ids, tokenizer)
    method = LayerIntegratedGradients(forward, model.get_input_embeddings())
    extra = tuple(inputs.values())
    attributions, delta = method.attribute(input_ids, baselines=baseline, additional_forward_args=extra,
                                           n_steps=steps, return_convergence_delta=True)
    scores = attributions.sum(dim=-1)[0].detach().tolist()
    with torch.no_grad():
        at_input, at_baseline = float(forward(input_ids, *extra)[0]), float(forward(baseline, *extra)[0])
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
    return {
        **item.prediction,
        "explained": item.target,
        "method": METHOD,
        "steps": steps,
        "words": words(item.text, item.spans, scores),
        "other": sum(score for span, score in zip(item.spans, scores) if span is None),
        "tokens": [{"token": token, "score": score} for token, score in zip(tokens, scores)],
        "sum": sum(scores),
        "output": at_input,
        "baseline_output": at_baseline,
        "delta": float(delta[0]),
    }


def baseline_ids(input_ids: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """The input with every token but the sequence markers ([CLS], [SEP], <s>, </s>) replaced by padding."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    kept = {getattr(tokenizer, f"{name}_token_id", None) for name in ("cls", "sep", "bos", "eos")} - {None}
    special = torch.tensor([[token in kept for token in row] for row in input_ids.tolist()], dtype=torch.bool)
    return torch.where(special, input_ids, torch.full_like(input_ids, pad))


def words(text: str, spans: list[tuple[int, int] | None], scores: list[float]) -> list[dict[str, Any]]:
    """Token scores summed into the words of ``text`` (runs of characters between spaces), in text order."""
    grouped: list[dict[str, Any]] = []
    previous_end = None
    for span, score in zip(spans, scores):
        if span is None:
            previous_end = None
            continue
        start, end = span
        if grouped and previous_end == start:  # a word piece continuing the word
            grouped[-1]["end"] = end
            grouped[-1]["score"] += score
        else:
            grouped.append({"start": start, "end": end, "score": score})
        previous_end = end
    for word in grouped:
        word["word"] = text[word["start"]:word["end"]]
    return [{"word": w["word"], "score": w["score"], "start": w["start"], "end": w["end"]} for w in grouped]


# --------------------------------------------------------------------------- showing

def render_text(explanation: dict[str, Any], top: int = 5) -> str:
    """The terminal form: the prediction, the words with signed scores, the largest ones, and the check."""
    if "answer" in explanation:
        head = (f"answer: {explanation['answer']!r} (score {explanation['score']:.3f}, characters "
                f"{explanation['start']}-{explanation['end']})")
        runners = [f"  {i}. {span['answer']!r} (score {span['score']:.3f}, characters {span['start']}-{span['end']})"
                   for i, span in enumerate(explanation.get("runners_up", []), start=2)]
        head += ("\nrunner-up spans:\n" + "\n".join(runners)) if runners else ""
    else:
        probs = "  ".join(f"{label}={p:.3f}" for label, p in explanation["probabilities"].items())
        head = f"{explanation['label']}  {probs}"
    others = "special tokens and the question" if "question" in explanation else "special tokens"
    inline = " ".join(f"{w['word']}[{w['score']:+.3f}]" for w in explanation["words"])
    strongest = sorted(explanation["words"], key=lambda w: -abs(w["score"]))[:top]
    lines = "\n".join(f"  {w['score']:+8.3f}  {w['word']}" for w in strongest)
    return (f"{head}\nwhy: {explanation['explained']}, by {explanation['method']}, {explanation['steps']} steps; "
            f"positive = pushed towards it\n  {inline}\nstrongest words:\n{lines}\n"
            f"  {explanation['other']:+8.3f}  (tokens not shown: {others})\n"
            f"check: scores sum to {explanation['sum']:.4f}; f(input) - f(baseline) = "
            f"{explanation['output'] - explanation['baseline_output']:.4f} "
            f"(convergence delta {explanation['delta']:+.2e})")


def render_html(explanations: list[dict[str, Any]]) -> str:
    """A self-contained HTML snippet: each word's background green (towards the prediction) or red (against),
    its opacity the score relative to the largest; the score in the word's tooltip."""
    parts = []
    for explanation in explanations:
        largest = max((abs(w["score"]) for w in explanation["words"]), default=0.0) or 1.0
        if "answer" in explanation:
            title = f"answer: {html.escape(explanation['answer'])} (score {explanation['score']:.3f})"
            runners = "".join(f"<li>{html.escape(span['answer'])} ({span['score']:.3f})</li>"
                              for span in explanation.get("runners_up", []))
            title += f"<br>runner-up spans: <ol start=\"2\">{runners}</ol>" if runners else ""
        else:
            title = f"{html.escape(explanation['label'])} ({explanation['probabilities'][explanation['label']]:.3f})"
        spans = []
        for w in explanation["words"]:
            colour = "0,150,0" if w["score"] >= 0 else "200,0,0"
            alpha = abs(w["score"]) / largest
            spans.append(f'<span style="background:rgba({colour},{alpha:.2f});padding:0 2px;border-radius:2px" '
                         f'title="{w["score"]:+.4f}">{html.escape(w["word"])}</span>')
        parts.append(f'<div class="finfed-explanation" style="font-family:sans-serif;margin:0.5em 0">'
                     f"<div><b>{title}</b> &mdash; {html.escape(explanation['explained'])}, "
                     f"{html.escape(explanation['method'])}, {explanation['steps']} steps "
                     f"(convergence delta {explanation['delta']:+.1e})</div>"
                     f'<p style="line-height:1.8">{" ".join(spans)}</p></div>')
    return "\n".join(parts) + "\n"


def explain_prediction(run_dir: str | Path, *, texts: list[str], question: str | None = None,
                       context: str | None = None, max_answer_tokens: int | None = None,
                       html_path: Path | None = None, as_json: bool = False, steps: int = DEFAULT_STEPS) -> str:
    """`finfed predict ... --explain`: the text to print (and the HTML snippet written to ``html_path``)."""
    if question is not None or context is not None:
        if not (question and context) or texts:
            raise FinfedError("qa prediction needs both --question and --context, and no texts")
        explanations = [explain_answer(run_dir, question, context, max_answer_tokens=max_answer_tokens,
                                       steps=steps)]
    elif texts:
        explanations = explain_texts(run_dir, texts, steps=steps)
    else:
        raise FinfedError("give texts to label, or --question and --context for a qa run")
    if html_path is not None:
        Path(html_path).write_text(render_html(explanations), encoding="utf-8")
    if as_json:
        return json.dumps(explanations if texts else explanations[0], indent=2)
    shown = "\n\n".join((f"| {e['text']}\n" if "text" in e else "") + render_text(e) for e in explanations)
    return shown + (f"\n\nhtml: {html_path}" if html_path is not None else "")
