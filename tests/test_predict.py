"""`finfed predict`: a CSV/JSONL file predicted in batches equals the same rows predicted one by one;
options in any order; outputs never replaced silently; every input check before the model is built."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys

import pytest
from test_export import LABELS, QA, TEXTS, fake_run

import finfed.inference.predict as predict_module
from finfed.cli.console import ProgressBar, console_logging
from finfed.cli.main import main
from finfed.inference.predict import answer_question, predict_texts

# different lengths, so that a batch pads: the answers must not depend on the company a row keeps
MORE = TEXTS + ["shares of cedar foods rose after the company said quarterly profit beat forecasts and it "
                "raised the dividend for the third year in a row .", "profit fell .", ""]


@pytest.fixture
def classification_run(tiny_config):
    return fake_run(tiny_config("train.eval_batch_size=2"), LABELS)  # 6 rows: three batches


@pytest.fixture
def qa_run(tiny_config, tmp_path):
    config = tiny_config(f"run_dir={tmp_path / 'qa-run'}", "task=qa", "data.partitioner=iid", "data.max_length=48",
                         "data.question_column=query", "qa.doc_stride=16", "qa.max_answer_tokens=6",
                         "train.eval_batch_size=2")
    return fake_run(config, [])


def _write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_csv_predicted_in_batches_equals_each_text_predicted_alone(classification_run, tmp_path, capsys):
    source = _write_csv(tmp_path / "news.csv", ["id", "text", "label"],
                        [[i, text, "gold"] for i, text in enumerate(MORE)])
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(classification_run), "--input", str(source), "--output", str(out)]) == 0
    with open(out, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["text"] for row in rows] == MORE and [int(row["row"]) for row in rows] == list(range(len(MORE)))
    for row, text in zip(rows, MORE):
        [alone] = predict_texts(classification_run, [text])
        assert row["label"] == alone["label"]
        assert {label: float(row[f"probabilities.{label}"]) for label in LABELS} == pytest.approx(
            alone["probabilities"], abs=1e-5)
    capsys.readouterr()
    # JSON lines on stdout without --output; a renamed column chosen with --text-column, before the run folder
    renamed = _write_csv(tmp_path / "renamed.csv", ["headline"], [[text] for text in MORE])
    assert main(["predict", "--text-column", "headline", str(classification_run), "--input", str(renamed)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["label"] for line in lines] == [row["label"] for row in rows]
    assert lines[1]["probabilities"] == pytest.approx({label: float(rows[1][f"probabilities.{label}"])
                                                       for label in LABELS}, abs=1e-6)


def test_a_jsonl_of_questions_predicted_in_batches_equals_each_question_asked_alone(qa_run, tmp_path):
    source = tmp_path / "questions.jsonl"  # the run read its questions from a column named `query`
    source.write_text("".join(json.dumps({"query": q, "context": c, "note": 1}) + "\n" for q, c in QA * 2),
                      encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    assert main(["predict", str(qa_run), "--input", str(source), "--output", str(out), "-q"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 * len(QA)
    for row, (question, context) in zip(rows, QA * 2):
        alone = answer_question(qa_run, question, context)
        assert (row["question"], row["answer"], row["start"], row["end"]) == (
            question, alone["answer"], alone["start"], alone["end"])
        assert row["score"] == pytest.approx(alone["score"], abs=1e-5)
        assert context[row["start"]:row["end"]] == row["answer"]
    as_csv = tmp_path / "answers.csv"
    assert main(["predict", str(qa_run), "--input", str(source), "--output", str(as_csv),
                 "--max-answer-tokens", "2"]) == 0
    with open(as_csv, encoding="utf-8", newline="") as handle:
        short = list(csv.DictReader(handle))
    assert [row["answer"] for row in short] == [
        answer_question(qa_run, q, c, max_answer_tokens=2)["answer"] for q, c in QA * 2]


def test_options_come_in_any_order(classification_run, capsys):
    capsys.readouterr()
    outputs = []
    for args in (["--json", str(classification_run), *TEXTS[:2]],
                 [str(classification_run), TEXTS[0], "--json", TEXTS[1]],
                 [str(classification_run), *TEXTS[:2], "--json"],
                 ["-q", str(classification_run), TEXTS[0], TEXTS[1], "--json"]):
        assert main(["predict", *args]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert all(output == outputs[0] for output in outputs) and [o["text"] for o in outputs[0]] == TEXTS[:2]


def test_an_existing_output_is_refused_unless_overwrite(classification_run, tmp_path, capsys):
    source = _write_csv(tmp_path / "news.csv", ["text"], [[text] for text in TEXTS])
    out = tmp_path / "mine.csv"
    out.write_text("my own work\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(classification_run), "--input", str(source), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "--overwrite" in err
    assert out.read_text(encoding="utf-8") == "my own work\n"
    assert main(["predict", str(classification_run), "--input", str(source), "--output", str(out),
                 "--overwrite"]) == 0
    assert out.read_text(encoding="utf-8").startswith("row,text,label,probabilities.")
    assert not list(tmp_path.glob(".*partial"))


def _bad_inputs(tmp_path, run):
    news = _write_csv(tmp_path / "news.csv", ["headline"], [["profit fell ."]])
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,id\nprofit fell .,1\nprofit rose .\n", encoding="utf-8")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "profit fell ."}\n{"text": \n', encoding="utf-8")
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"text": "profit fell ."}\n{"text": null}\n', encoding="utf-8")
    return [
        ([run, "--input", news], news, "no column 'text'"),
        ([run, "--input", news, "--text-column", "title"], news, "no column 'title'"),
        ([run, "--input", ragged], ragged, "line 3"),
        ([run, "--input", broken], broken, "line 2 is not valid JSON"),
        ([run, "--input", nulls], nulls, "line 2: column 'text' is NoneType"),
        ([run, "--input", tmp_path / "absent.csv"], tmp_path / "absent.csv", "does not exist"),
        ([run, "--input", tmp_path / "news.parquet"], tmp_path / "news.parquet", "unsupported extension"),
        ([run, "--input", news, "--output", tmp_path / "out.txt"], tmp_path / "out.txt", "unsupported extension"),
        ([run, "--input", news, "--question-column", "q"], run, "reads no 'question' column"),
        ([run, "--input", news, "--output", news], news, "is the input file"),
    ]


def test_bad_inputs_fail_in_one_line_before_the_model_is_built(classification_run, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the inputs were checked")
    monkeypatch.setattr(predict_module, "load_run_model", no_model)
    capsys.readouterr()
    for args, named, expected in _bad_inputs(tmp_path, classification_run):
        assert main(["predict", *map(str, args)]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(named) in err and expected in err, (args, err)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal, level, expected", [
    (True, logging.INFO, "\r[finfed] predicting [###############---------------] 2/4 rows\r[finfed] predicting "
                         "[##############################] 4/4 rows\n"),
    (False, logging.INFO, "[finfed] predicting: 4/4 rows\n"),
    (True, logging.WARNING, ""),  # --quiet
])
def test_the_progress_bar_redraws_on_a_terminal_and_says_one_line_elsewhere(monkeypatch, terminal, level, expected):
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with console_logging(level):
        bar = ProgressBar("predicting", "rows")
        bar(2, 4)
        bar(4, 4)
        bar.close()
    assert stream.getvalue() == expected
