"""`finfed export --quantize int8`: the quantized model loads through the same pipeline and labels as fp32 does.

The run is test_export's fake (a tiny random BERT with randomised adapters and head), with
test_explain's word-level tokenizer so that texts are not all [UNK]. The agreement rate with the
fp32 export is measured on a generated test split of 300 sentences; the default run's figure
(the real MiniLM) is in benchmarks/results/int8-export.json.
"""

from __future__ import annotations

import json

import pytest
from test_explain import word_backbone  # noqa: F401 (a fixture)
from test_export import LABELS, QA, classify, fake_run
from transformers import pipeline

from finfed.cli.main import main
from finfed.data.synthetic_news import generate_news
from finfed.inference.export import EXPORT_INFO, export_run

pytest.importorskip("torchao")

#: the least share of the fp32 export's labels the int8 export must reproduce on the tiny model (measured: 1.0)
MIN_AGREEMENT = 0.95


def labels_of(folder, texts):
    pipe = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    return [result["label"] for result in pipe(texts, truncation=True, batch_size=32)]


def test_int8_export_loads_in_the_pipeline_and_agrees_with_fp32(tiny_config, word_backbone, tmp_path,  # noqa: F811
                                                                capsys):
    run = fake_run(tiny_config(f"model.backbone={word_backbone}"), LABELS)
    export_run(run, tmp_path / "fp32", merge=True)
    assert main(["export", str(run), str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    assert "(merged, int8)" in capsys.readouterr().out
    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    manifest = json.loads((tmp_path / "int8" / EXPORT_INFO).read_text())
    assert manifest["form"] == "merged" and manifest["quantization"]["method"] == "int8"
    assert "torchao" in (tmp_path / "int8" / "README.md").read_text()
    assert not list(tmp_path.glob(".*partial*"))
    texts = generate_news(300, 4, seed=11)["text"].tolist()
    fp32, int8 = labels_of(tmp_path / "fp32", texts), labels_of(tmp_path / "int8", texts)
    agreement = sum(a == b for a, b in zip(fp32, int8)) / len(texts)
    assert agreement >= MIN_AGREEMENT, f"int8 agrees with fp32 on {agreement:.3f} of the test split"
    probabilities = classify(tmp_path / "int8")  # all labels' scores, as the pipeline gives them
    assert all(set(p) == set(LABELS) and sum(p.values()) == pytest.approx(1.0, abs=1e-4) for p in probabilities)
    size = lambda folder: (folder / "model.safetensors").stat().st_size
    assert size(tmp_path / "int8") < size(tmp_path / "fp32")


def test_int8_qa_export_answers_through_the_pipeline(tiny_config, word_backbone, tmp_path):  # noqa: F811
    config = tiny_config(f"model.backbone={word_backbone}", f"run_dir={tmp_path / 'qa-run'}", "task=qa",
                         "data.partitioner=iid", "data.max_length=48", "qa.doc_stride=16", "qa.max_answer_tokens=6")
    run = fake_run(config, [])
    export_run(run, tmp_path / "fp32", merge=True)
    export_run(run, tmp_path / "int8", quantize="int8")
    answers = {}
    for form in ("fp32", "int8"):
        pipe = pipeline("question-answering", model=str(tmp_path / form), trust_remote_code=True)
        answers[form] = [pipe(question=q, context=c)["answer"] for q, c in QA]
    assert all(answers["int8"]) and all(answer in c for answer, (_, c) in zip(answers["int8"], QA))
