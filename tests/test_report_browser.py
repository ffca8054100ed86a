"""The HTML privacy report, opened in a real headless Chromium, shows its plots."""

import json
import shutil
import subprocess

import pytest
from PIL import Image

from finfed.config import load_config, save_config
from finfed.reporting.privacy_report import write_reports

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MATPLOTLIB_BLUE = (31, 119, 180)  # first colour of matplotlib's default cycle: the plotted lines


def _finished_run(run_dir):
    """A small, complete run directory (its figures' correctness is tested elsewhere)."""
    run_dir.mkdir()
    save_config(load_config(None, ["name=browser-check"]), run_dir / "config.yaml")
    rounds = [{"round": r, "central": {"accuracy": 0.4 + 0.1 * r, "macro_f1": 0.3 + 0.1 * r, "loss": 1 - 0.1 * r},
               "sites": [], "failures": [], "refusals": []} for r in range(4)]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rounds) + "\n")
    site = {"target_epsilon": 8.0, "delta": 1e-5, "noise_multiplier": 0.7, "max_grad_norm": 1.0,
            "sample_rate": 0.1, "records": 600, "accountant": "prv", "steps": 30,
            "epsilon_by_round": {"1": 5.5, "2": 6.9, "3": 8.0}, "epsilon": 8.0}
    (run_dir / "privacy.json").write_text(json.dumps(
        {"dp_enabled": True, "unit": "record", "guarantee": "record-level", "sites": {"0": site, "1": site}}))
    (run_dir / "status.json").write_text(json.dumps(
        {"state": "complete", "baseline": {"accuracy": 0.38, "macro_f1": 0.18},
         "membership_audit": {"site": 0, "attack": "loss-threshold", "auc": 0.52, "members": 100,
                              "non_members": 100}}))
    return run_dir


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_html_report_renders_its_plots_in_headless_chromium(tmp_path):
    paths = write_reports(_finished_run(tmp_path / "run"))
    screenshot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900",
                    f"--screenshot={screenshot}", paths["html"].resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = Image.open(screenshot).convert("RGB")
    pixels = list(image.getdata())
    blue = sum(1 for p in pixels if all(abs(a - b) < 25 for a, b in zip(p, MATPLOTLIB_BLUE)))
    assert blue > 200, "the plots' lines are not on screen"
    assert sum(1 for p in pixels if p != (255, 255, 255)) > 0.02 * len(pixels)
    # This fixture's stated epsilon does not match its recorded steps: the report must say so.
    assert "MISMATCH" in paths["md"].read_text()
    assert "With every site at epsilon <= 8.000 (delta 1e-05), the global model reached accuracy 0.7000" \
        in paths["md"].read_text()
