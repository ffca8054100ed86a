"""A run folder with a corrupt or missing file: one line naming the file, no traceback, a non-zero exit."""

from __future__ import annotations

import pytest
from report_runs import finished_run
from test_export import LABELS, fake_run

from finfed.cli.main import main
from finfed.runs.outputs import METRICS, MODEL, MODEL_INFO, PRIVACY, STATUS


def _one_line_naming(capsys, path) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("finfed: error: ") and str(path) in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("name, content", [
    (METRICS, '{"round": 0, "central": {}}\n{"round": 1, "centr'),  # truncated mid-write
    (PRIVACY, '{"dp_enabled": true, "sites": '),
    (STATUS, "\x00\x00\x00"),
    (STATUS, "[1, 2]"),
], ids=["metrics", "privacy", "status", "status-not-an-object"])
def test_report_on_a_run_with_a_corrupt_file_names_it(tmp_path, capsys, name, content):
    run_dir = finished_run(tmp_path)
    (run_dir / name).write_text(content, encoding="utf-8")
    assert main(["report", str(run_dir)]) == 2
    _one_line_naming(capsys, run_dir / name)


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_run_without_its_model_description_is_refused_naming_the_file(tiny_config, tmp_path, capsys, command):
    run_dir = fake_run(tiny_config(), LABELS)
    (run_dir / MODEL / MODEL_INFO).unlink()
    args = [run_dir, "some text"] if command == "predict" else [run_dir, tmp_path / "export"]
    capsys.readouterr()  # building the fake run's model printed progress bars
    assert main([command, *map(str, args)]) == 2
    assert "is missing" in _one_line_naming(capsys, run_dir / MODEL / MODEL_INFO)
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_corrupt_adapter_file_is_refused_naming_the_file(tiny_config, tmp_path, capsys, command):
    run_dir = fake_run(tiny_config(), LABELS)
    adapter = run_dir / MODEL / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])  # truncated
    args = [run_dir, "some text"] if command == "predict" else [run_dir, tmp_path / "export"]
    capsys.readouterr()  # building the fake run's model printed progress bars
    assert main([command, *map(str, args)]) == 2
    assert "could not be loaded" in _one_line_naming(capsys, adapter)
