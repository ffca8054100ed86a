"""Client-level DP on the coordinator (finfed.privacy.client_level), with its own accounting."""

import pytest
from inprocess_grid import serve
from opacus.accountants import RDPAccountant

from finfed.cli.main import main
from finfed.privacy.client_level import ORDERS, client_level_epsilon
from finfed.runs.outputs import read_privacy, read_status


def test_client_level_epsilon_is_opacus_rdp_over_rounds():
    # At integer orders only, where Opacus and dp-accounting agree exactly (tests/test_client_level_dp.py).
    accountant = RDPAccountant()
    accountant.history = [(1.2, 0.5, 10)]
    assert client_level_epsilon(noise_multiplier=1.2, sample_rate=0.5, rounds=10, delta=1e-5) == pytest.approx(
        accountant.get_epsilon(delta=1e-5, alphas=list(ORDERS)))
    assert client_level_epsilon(noise_multiplier=1.2, sample_rate=1.0, rounds=10, delta=1e-5) > \
        client_level_epsilon(noise_multiplier=1.2, sample_rate=0.5, rounds=10, delta=1e-5)


CLIENT_DP = ("train.learning_rate=0.005", "client_dp.noise_multiplier=0.8", "privacy.membership_audit=false")


def _check_both_guarantees(run_dir, mode) -> None:
    assert read_status(run_dir)["state"] == "complete"
    privacy = read_privacy(run_dir)
    client = privacy["client_level"]
    assert client["rounds"] == 2 and client["num_sites"] == 2 and client["unit"] == "site"
    assert client["sample_rate"] == 1.0 and client["expected_sites_per_round"] == 2.0
    assert client["epsilon"] == pytest.approx(
        client_level_epsilon(noise_multiplier=0.8, sample_rate=1.0, rounds=2, delta=1e-5))
    assert all(site["epsilon"] <= 8.0 for site in privacy["sites"].values())  # record-level, separate
    assert main(["report", str(run_dir)]) == 0
    assert "## Client-level DP" in (run_dir / "report.md").read_text()
    assert mode in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_client_level_dp_run_reports_both_guarantees(tiny_config, mode):
    """finfed's ServerApp and ClientApps in this process (tests/inprocess_grid.py): the fast tier's cover."""
    config = tiny_config(*CLIENT_DP, f"client_dp.mode={mode}")
    serve(config)
    _check_both_guarantees(config.resolved_run_dir, mode)


@pytest.mark.slow  # a whole Flower simulation (~40 s on 2 cores)
def test_simulation_with_client_level_dp_reports_both_guarantees(tiny_simulate, tmp_path):
    """Through Flower's simulation engine, once: the mode that updates its clipping bound (both modes run in
    process above; the engine only carries the messages)."""
    assert tiny_simulate(*CLIENT_DP, "client_dp.mode=adaptive") == 0
    _check_both_guarantees(tmp_path / "run", "adaptive")
