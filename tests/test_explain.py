"""`finfed predict --explain`: Integrated Gradients over a tiny random model's input words.

The runs are test_export's fakes (the real writers around a tiny random BERT whose adapters and
head are randomised), so the explained model is the one `finfed predict` loads.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from test_export import LABELS, QA, TEXTS, fake_run
from transformers import BertTokenizerFast

from finfed.cli.main import main
from finfed.errors import ConfigError
from finfed.inference.explain import baseline_ids, explain_answer, explain_texts, words
from finfed.inference.predict import answer_question, predict_texts
from finfed.runs.model_store import load_run_model
from finfed.tasks.qa_decoding import decode_answer, ranked_answers


@pytest.fixture(scope="module")
def word_backbone(tiny_backbone, tmp_path_factory) -> str:
    """The tiny BERT with a tokenizer that knows its vocabulary's words.

    conftest's tokenizer is built with ``vocab_file=``, which transformers 5 ignores: it maps every
    word to [UNK], and an explanation over identical tokens would say little.
    """
    folder = tmp_path_factory.mktemp("word-bert")
    shutil.copytree(tiny_backbone, folder, dirs_exist_ok=True)
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    assert tokenizer.unk_token_id not in tokenizer(TEXTS[0])["input_ids"]
    tokenizer.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture
def classification_run(tiny_config, word_backbone):
    return fake_run(tiny_config(f"model.backbone={word_backbone}"), LABELS)


@pytest.fixture
def qa_run(tiny_config, word_backbone, tmp_path):
    config = tiny_config(f"model.backbone={word_backbone}", f"run_dir={tmp_path / 'qa-run'}", "task=qa",
                         "data.partitioner=iid", "data.max_length=48", "qa.doc_stride=16", "qa.max_answer_tokens=6")
    return fake_run(config, [])


def test_attributions_sum_to_the_prediction_difference(classification_run):
    explained = explain_texts(classification_run, TEXTS, steps=64)
    for explanation, prediction in zip(explained, predict_texts(classification_run, TEXTS)):
        assert explanation["label"] == prediction["label"]
        assert explanation["probabilities"] == pytest.approx(prediction["probabilities"], abs=1e-6)
        difference = explanation["output"] - explanation["baseline_output"]
        # completeness: the sum is the target logit at the input minus at the baseline, up to Captum's
        # convergence delta (the integral's error), which is small for 64 steps
        assert explanation["sum"] == pytest.approx(difference + explanation["delta"], abs=1e-5)
        assert abs(explanation["delta"]) <= 0.01 * max(1.0, abs(difference))
        assert sum(w["score"] for w in explanation["words"]) + explanation["other"] == pytest.approx(
            explanation["sum"], abs=1e-5)
        # the words are the text's own, in order
        assert " ".join(w["word"] for w in explanation["words"]) == explanation["text"]


def test_the_explained_value_is_the_predicted_logit_and_the_baseline_keeps_special_tokens(classification_run):
    task, model, tokenizer = load_run_model(classification_run)
    item = task.explainable_text(model, tokenizer, TEXTS[0])
    with torch.no_grad():
        logits = model(**item.inputs).logits[0]
    label = LABELS.index(predict_texts(classification_run, TEXTS[:1])[0]["label"])
    assert float(item.score(model(**item.inputs))[0]) == pytest.approx(float(logits[label]))
    baseline = baseline_ids(item.inputs["input_ids"], tokenizer)[0].tolist()
    ids = item.inputs["input_ids"][0].tolist()
    assert baseline[0] == ids[0] == tokenizer.cls_token_id and baseline[-1] == ids[-1] == tokenizer.sep_token_id
    assert set(baseline[1:-1]) == {tokenizer.pad_token_id} and tokenizer.unk_token_id not in ids


def test_qa_explanation_gives_the_answer_span_its_score_and_runner_ups(qa_run):
    for question, context in QA:
        explanation = explain_answer(qa_run, question, context, runners_up=3, steps=32)
        answer = answer_question(qa_run, question, context)
        assert (explanation["answer"], explanation["start"], explanation["end"]) == (
            answer["answer"], answer["start"], answer["end"])
        assert explanation["score"] == pytest.approx(answer["score"], abs=1e-6)
        runners = explanation["runners_up"]
        assert len(runners) == 3
        scores = [explanation["score"], *(span["score"] for span in runners)]
        assert scores == sorted(scores, reverse=True)
        assert len({(span["start"], span["end"]) for span in [explanation, *runners]}) == 4
        assert all(context[span["start"]:span["end"]] == span["answer"] for span in runners)
        difference = explanation["output"] - explanation["baseline_output"]
        assert explanation["sum"] == pytest.approx(difference + explanation["delta"], abs=1e-5)
        assert {w["word"] for w in explanation["words"]} <= set(context.split())


def test_ranked_spans_start_with_the_decoders_answer(qa_run):
    task, model, tokenizer = load_run_model(qa_run)
    for question, context in QA:
        item = task.explainable_answer(model, tokenizer, question, context, runners_up=0)
        frame_examples = task.encode_for_evaluation(
            __import__("pandas").DataFrame([{"id": "q", "question": question, "context": context,
                                             "answer_texts": ["x"], "answer_starts": [0]}]), tokenizer)
        starts, ends = task._window_logits(model, frame_examples)
        windows = [example["window"] for example in frame_examples]
        best = decode_answer(context, windows, starts, ends, task.max_answer_tokens)
        [ranked] = ranked_answers(context, windows, starts, ends, task.max_answer_tokens, 1)
        assert ranked.answer == best
        assert item.prediction["answer"] == best.text


def test_words_join_word_pieces_and_skip_unshown_tokens():
    text = "orion cut dividends ."
    spans = [None, (0, 5), (6, 9), (10, 16), (16, 19), (20, 21), None]
    scores = [9.0, 1.0, 2.0, 0.5, 0.25, -1.0, 9.0]
    assert [(w["word"], w["score"]) for w in words(text, spans, scores)] == [
        ("orion", 1.0), ("cut", 2.0), ("dividends", 0.75), (".", -1.0)]


def test_predict_explain_names_the_inputs_words_and_writes_html(classification_run, tmp_path, capsys):
    page = tmp_path / "why.html"
    assert main(["predict", str(classification_run), TEXTS[0], "--explain", "--explain-html", str(page),
                 "--explain-steps", "16"]) == 0
    out = capsys.readouterr().out
    label = predict_texts(classification_run, TEXTS[:1])[0]["label"]
    assert out.splitlines()[1].startswith(label)
    for word in TEXTS[0].split():
        assert f"{word}[" in out  # every word of the input, with its signed score
    assert "strongest words:" in out and "convergence delta" in out
    snippet = page.read_text()
    assert snippet.startswith('<div class="finfed-explanation"') and "outlook</span>" in snippet
    assert "rgba(" in snippet


def test_predict_explain_for_qa_shows_the_span_and_runner_ups(qa_run, capsys):
    question, context = QA[0]
    assert main(["predict", str(qa_run), "--question", question, "--context", context, "--explain",
                 "--explain-steps", "8"]) == 0
    out = capsys.readouterr().out
    answer = answer_question(qa_run, question, context)
    assert out.startswith(f"answer: {answer['answer']!r} (score {answer['score']:.3f}")
    assert "runner-up spans:\n  2. " in out and "tokens not shown: special tokens and the question" in out


def test_explaining_the_wrong_way_names_the_run(classification_run, qa_run, capsys):
    with pytest.raises(ConfigError, match=f"run {qa_run}: a 'qa' model labels no texts"):
        explain_texts(qa_run, TEXTS[:1])
    assert main(["predict", str(classification_run), "--question", "who?", "--context", "x y", "--explain"]) == 2
    assert f"run {classification_run}: a 'classification' model answers no questions" in capsys.readouterr().err
