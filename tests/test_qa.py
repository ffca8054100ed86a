"""Extractive QA: windowing and offsets, answer checks, SQuAD metrics, decoding, the privacy unit."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from finfed.config import load_config
from finfed.data.partition import load_federated_data
from finfed.data.qa_records import normalise_qa_records, read_qa_file
from finfed.errors import ConfigError, DataError
from finfed.models.backbone import load_tokenizer
from finfed.models.hf_qa_pipeline import whole_words
from finfed.tasks import get_task, task_class
from finfed.tasks.qa import QA_RECORDS
from finfed.tasks.qa_decoding import decode_answer, ranked_answers
from finfed.tasks.qa_metrics import exact_match, f1, normalize_answer, squad_scores
from finfed.tasks.qa_windows import NO_ANSWER, record_windows, training_windows
from finfed.training.local import train_locally


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("bundled")  # the real MiniLM word pieces, so offsets are realistic


def record(context: str, answer: str, question: str = "What was the figure?", occurrence: int = 0,
           **extra) -> dict:
    start = -1
    for _ in range(occurrence + 1):
        start = context.index(answer, start + 1)
    return {"id": extra.pop("id", "r1"), "question": question, "context": context,
            "answer_texts": [answer], "answer_starts": [start], **extra}


def span_text(window, context: str) -> str:
    return context[window.offsets[window.start][0]:window.offsets[window.end][1]]


FILLER = " ".join(f"In period {i} the group reported stable volumes across its regions." for i in range(12))


# ------------------------------------------------------------------ windowing and offsets
def test_answer_at_the_start_of_the_context(tokenizer):
    context = "EUR 412 million was the quarter's net profit, up from a year earlier."
    [window] = record_windows(pd.DataFrame([record(context, "EUR 412 million")]), tokenizer,
                              max_length=64, stride=16)
    assert window.holds_answer and span_text(window, context) == "EUR 412 million"


def test_answer_at_the_end_of_a_long_context(tokenizer):
    context = FILLER + " The final dividend is EUR 1.35 per share"
    windows = record_windows(pd.DataFrame([record(context, "EUR 1.35 per share")]), tokenizer,
                             max_length=64, stride=16)
    assert len(windows) > 3
    holding = [w for w in windows if w.holds_answer]
    assert holding and all(span_text(w, context) == "EUR 1.35 per share" for w in holding)
    assert windows[0].start == windows[0].end == NO_ANSWER  # windows without the answer point at [CLS]


def test_answer_across_a_window_boundary_is_found_in_the_overlapping_window(tokenizer):
    questions = "What was the figure?"
    context = FILLER
    probe = record_windows(pd.DataFrame([record(context, "stable volumes")]), tokenizer, max_length=48, stride=16)
    first_end = probe[0].offsets[max(i for i, s in enumerate(probe[0].offsets) if s)][1]
    # an answer whose characters start inside window 0 and end after it
    start = context.rfind(" ", 0, first_end - 3) + 1
    answer = context[start:context.index(" ", first_end + 2)]
    row = {"id": "b", "question": questions, "context": context, "answer_texts": [answer],
           "answer_starts": [start]}
    windows = record_windows(pd.DataFrame([row]), tokenizer, max_length=48, stride=16)
    assert not windows[0].holds_answer  # cut by the boundary
    assert any(w.holds_answer and span_text(w, context) == answer for w in windows[1:])


def test_unicode_before_the_answer_keeps_character_offsets(tokenizer):
    context = "Résumé of Société Générale’s “core” €-zone unit — café owners 😀 saw 12.5% growth in 2024."
    windows = record_windows(pd.DataFrame([record(context, "12.5%")]), tokenizer, max_length=64, stride=16)
    assert span_text(windows[0], context) == "12.5%"


def test_training_takes_one_window_per_record_and_reports_records_without_one(tokenizer):
    long_answer_context = "Guidance: " + FILLER
    frame = pd.DataFrame([
        record(FILLER + " Net debt fell to EUR 2.1bn.", "EUR 2.1bn", id="late"),
        record(long_answer_context, long_answer_context[10:600], id="too-long"),
    ])
    windows = record_windows(frame, tokenizer, max_length=48, stride=24)
    chosen, left_out = training_windows(windows)
    assert [w.record for w in chosen] == [0] and left_out == [1]


# ------------------------------------------------------------------ reading and checking records
def qa_settings(*overrides: str):
    return load_config(None, ["task=qa", "data.partitioner=iid", *overrides]).data


def test_wrong_offset_is_refused_naming_the_file_and_id(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"id": "ok", "question": "Q?", "context": "Revenue was EUR 5m.",
             "answers": {"text": ["EUR 5m"], "answer_start": [12]}},
            {"id": "shifted", "question": "Q?", "context": "Revenue was EUR 5m.",
             "answers": {"text": ["EUR 5m"], "answer_start": [10]}}]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"qa.jsonl.*'shifted'.*not at its offset|qa.jsonl.*1 record"):
        normalise_qa_records(read_qa_file(path), qa_settings(), f"data file {path}")
    kept = normalise_qa_records(read_qa_file(path), qa_settings("data.bad_answers=drop"), f"data file {path}")
    assert kept["id"].tolist() == ["ok"] and kept.attrs["dropped_bad_answers"] == 1


def test_squad_json_and_custom_field_names(tmp_path):
    squad = {"data": [{"title": "t", "paragraphs": [{"context": "Fitch cut the rating to BBB.", "qas": [
        {"id": "q1", "question": "To what?", "answers": [{"text": "BBB", "answer_start": 24}]}]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad), encoding="utf-8")
    frame = normalise_qa_records(read_qa_file(path), qa_settings(), "squad")
    assert frame.loc[0, "answer_texts"] == ["BBB"] and frame.loc[0, "context"][24:27] == "BBB"
    custom = pd.DataFrame([{"qid": "x", "q": "Who?", "passage": "Anna Berg", "gold": {"text": ["Anna"],
                                                                                       "answer_start": [0]}}])
    settings = qa_settings("data.question_column=q", "data.context_column=passage", "data.answers_column=gold",
                           "data.id_column=qid")
    assert normalise_qa_records(custom, settings, "custom")["id"].tolist() == ["x"]
    with pytest.raises(DataError, match="missing QA field"):
        normalise_qa_records(custom, qa_settings(), "custom")


def test_the_qa_task_refuses_settings_it_cannot_run_with():
    # The task checks its own settings wherever it is looked up (preflight, sites, coordinator, deploy).
    with pytest.raises(ConfigError, match="dirichlet"):
        task_class(load_config(None, ["task=qa", "data.partitioner=dirichlet"]))
    with pytest.raises(ConfigError, match="doc_stride"):
        task_class(load_config(None, ["task=qa", "data.max_length=80", "qa.doc_stride=64"]))
    task_class(load_config(None, ["task=qa", "data.max_length=96", "qa.doc_stride=32"]))
    task_class(load_config(None, ["data.partitioner=dirichlet"]))  # classification splits by label


def test_simulate_refuses_dirichlet_qa_before_anything_starts(tiny_simulate, tmp_path, capsys):
    assert tiny_simulate("task=qa", "data.partitioner=dirichlet") == 2
    assert "dirichlet" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ metrics and decoding
def test_squad_normalisation_exact_match_and_f1_by_hand():
    assert normalize_answer("The  EUR 412 million.") == "eur 412 million"
    assert exact_match("the EUR 412 million", "EUR 412 million.") == 1.0
    # prediction {412, million, euros} vs gold {eur, 412, million}: P = R = 2/3, F1 = 2/3
    assert f1("412 million euros", "EUR 412 million") == pytest.approx(2 / 3)
    assert f1("Moody's", "Fitch") == 0.0
    scores = squad_scores(["BBB", "a 5% rise"], [["BB+", "BBB"], ["5%"]])
    # record 1: exact; record 2: tokens {5, rise} vs {5}: P = 1/2, R = 1, F1 = 2/3
    assert scores == pytest.approx({"exact_match": 0.5, "f1": (1 + 2 / 3) / 2})


def test_decoding_respects_the_answer_length_and_picks_the_best_window(tokenizer):
    context = FILLER + " Payment date is 14 March 2025."
    windows = record_windows(pd.DataFrame([record(context, "14 March 2025")]), tokenizer, max_length=48, stride=16)
    target = next(w for w in windows if w.holds_answer)
    starts, ends = [torch.zeros(len(w.offsets)) for w in windows], [torch.zeros(len(w.offsets)) for w in windows]
    index = windows.index(target)
    starts[index][target.start], ends[index][target.end] = 8.0, 8.0
    answer = decode_answer(context, windows, starts, ends, max_answer_tokens=10)
    assert (answer.text, answer.start) == ("14 March 2025", context.index("14 March 2025"))
    too_short = decode_answer(context, windows, starts, ends, max_answer_tokens=1)
    assert too_short.text != "14 March 2025"


def test_an_answer_ending_inside_a_number_is_decoded_as_the_whole_amount(tokenizer):
    """The tokenizer cuts "0.42" into "0", "." and "42": a model whose end logit peaks on "0" (an undertrained
    DP model did, so `finfed predict` said "EUR 0") still gets the amount the passage states."""
    context = "Harbor Retail's board proposed a dividend of EUR 0.42 per share, payable on 14 May 2025."
    [window] = record_windows(pd.DataFrame([record(context, "EUR 0.42")]), tokenizer, max_length=64, stride=16)
    zero = next(t for t, span in enumerate(window.offsets) if span and context[span[0]:span[1]] == "0")
    starts, ends = torch.zeros(len(window.offsets)), torch.zeros(len(window.offsets))
    starts[window.start], ends[zero] = 8.0, 8.0
    answer = decode_answer(context, [window], [starts], [ends], max_answer_tokens=10)
    assert (answer.text, answer.start, answer.end) == ("EUR 0.42", context.index("EUR"), context.index(" per"))
    [ranked] = ranked_answers(context, [window], [starts], [ends], 10, 1)
    assert ranked.answer == answer


@pytest.mark.parametrize(("text", "piece", "whole"), [
    ("a dividend of EUR 0.42 per share, payable", "EUR 0", "EUR 0.42"),
    ("a dividend of EUR 0.42 per share, payable", "42 per share", "0.42 per share"),
    ("a dividend of EUR 0.42 per share, payable", "per share", "per share"),  # the clause's comma stays out
    ("net debt of USD1,204.5 million.", "204", "USD1,204.5"),
    ("sales of $1.20bn in 2025", "1.2", "$1.20bn"),
    ("growth of 4.5% a year", "4.5", "4.5%"),
    ("rated A-1 on 2025-05-14.", "2025-05", "2025-05-14"),
    ("rated A-1 on 2025-05-14.", "A", "A-1"),
    ("Harbor Retail's board", "Harbor Retail", "Harbor Retail"),  # a name, not its possessive
    ("up 3.1 per cent. Shares rose", "3.1 per cent", "3.1 per cent"),
])
def test_decoded_spans_never_start_or_end_inside_a_word(text, piece, whole):
    start = text.index(piece)
    begin, end = whole_words(text, start, start + len(piece))
    assert text[begin:end] == whole


def test_the_span_head_starts_at_the_configured_scale_alike_at_every_site(tiny_config):
    own = get_task(tiny_config("task=qa", "qa.head_init_std=0"), []).build_base_model().qa_outputs  # the backbone's
    config = tiny_config("task=qa", "qa.head_init_std=0.2")
    first, second = (get_task(config, []).build_base_model().qa_outputs for _ in range(2))
    assert torch.equal(first.weight, second.weight) and not first.bias.any()
    assert 0.15 < float(first.weight.std()) < 0.25 and float(own.weight.std()) < 0.1


# ------------------------------------------------------------------ the privacy unit
def test_a_record_never_yields_two_training_samples_in_one_step(tiny_config, tokenizer):
    """Long contexts are cut into many windows; under DP-SGD each record may still join a step only once."""
    config = tiny_config("task=qa", "data.partitioner=iid", "data.max_length=48", "qa.doc_stride=24",
                         "model.backbone=bundled", "train.batch_size=4")
    repeated = " Net sales were EUR 9m. " + FILLER
    frame = pd.DataFrame([record(repeated * 2, "EUR 9m", id=f"r{i}", occurrence=1) for i in range(24)])
    task = get_task(config, [])
    windows = record_windows(frame, tokenizer, max_length=48, stride=24)
    assert sum(w.holds_answer for w in windows) > len(frame)  # the answer sits in several windows
    examples = task.encode(frame, tokenizer)
    assert sorted(item["record"] for item in examples) == list(range(len(frame)))

    seen_batches = []

    def recording_collate(items):
        seen_batches.append([item["record"] for item in items])
        return task.collate(items)

    from finfed.privacy.accounting import SiteAccountant
    from finfed.privacy.calibration import plan_privacy
    plan = plan_privacy(num_records=len(examples), train=config.train, privacy=config.privacy, rounds=1,
                        site="test")
    model = task.build_model()
    train_locally(model, examples, recording_collate, task.loss, loss_reduction=task.loss_reduction,
                  settings=config.train, steps=3, seed=0, plan=plan, accountant=SiteAccountant("prv"))
    assert seen_batches and all(len(batch) == len(set(batch)) for batch in seen_batches)


def test_federated_qa_data_splits_by_record(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"id": f"q{i}", "question": "What rose?", "context": f"Revenue rose {i}%.",
             "answers": {"text": [f"{i}%"], "answer_start": [13]}} for i in range(40)]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    settings = qa_settings("data.source=file", f"data.path={path}")
    data = load_federated_data(settings, 2, QA_RECORDS)
    assert len(data.train_pool) + len(data.test) == 40 and data.labels == []
    assert set(data.train_pool["id"]).isdisjoint(data.test["id"])


def test_qa_test_split_keeps_each_passage_on_one_side():
    data = load_federated_data(qa_settings("data.synthetic_size=600", "data.partitioner=column"), 3, QA_RECORDS)
    assert set(data.train_pool["context"]).isdisjoint(data.test["context"])
    assert 0.15 < len(data.test) / 600 < 0.35
