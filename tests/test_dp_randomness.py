"""DP randomness the coordinator can neither seed nor predict, and every epsilon labelled with its own delta.

Runs are driven without Flower: real site rounds (finfed.site.rounds.train_round on the tiny BERT)
feed the coordinator's real records (finfed.coordinator.run.FederatedRun), whose run directory the
report and the export then read.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finfed.compat import generator_from_words
from finfed.coordinator.run import FederatedRun
from finfed.errors import ConfigError, PrivacyError
from finfed.inference.export import EXPORT_INFO, export_run
from finfed.models.adapters import exchanged_state
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.randomness import (
    REPRODUCIBLE_LABEL,
    dp_randomness,
    secret_generator,
)
from finfed.reporting.privacy_report import build_report
from finfed.reporting.render import render_markdown, write_reports
from finfed.runs.outputs import PRIVACY, read_privacy
from finfed.site.rounds import site_context, train_round

SMALL = "data.synthetic_size=120"  # 45 training records per site: a DP round of a few steps


def _initial(site):
    return {name: tensor.numpy() for name, tensor in exchanged_state(site.task.build_model()).items()}


def _update(config, node_config=None):
    site = site_context(config, node_config or {"partition-id": 0})
    return train_round(site, _initial(site), server_round=1, accountant_state=None)


def _same(first, second) -> bool:
    return all(np.array_equal(first.arrays[name], second.arrays[name]) for name in first.arrays)


# --------------------------------------------------------------------------- A: where the randomness comes from

def test_torch_manual_seed_keeps_32_bits_so_secret_generators_set_the_whole_state():
    # Why finfed/compat.py exists: two seeds that differ above bit 32 give the same stream.
    low, high = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5 + 2**40)
    assert torch.equal(torch.rand(8, generator=low), torch.rand(8, generator=high))
    # A generator built from 624 words uses all of them: one flipped bit in the last word changes the stream.
    words = np.arange(1, 625, dtype=np.uint32)
    flipped = words.copy()
    flipped[-1] ^= 1
    first, second = generator_from_words(words), generator_from_words(flipped)
    assert not torch.equal(torch.rand(1000, generator=first), torch.rand(1000, generator=second))
    assert torch.equal(torch.rand(1000, generator=generator_from_words(words)),
                       torch.rand(1000, generator=generator_from_words(words)))
    # Fresh secret generators are unrelated to the global seed and to each other.
    torch.manual_seed(0)
    one = torch.randn(64, generator=secret_generator())
    torch.manual_seed(0)
    assert not torch.equal(one, torch.randn(64, generator=secret_generator()))


def test_reproducible_generators_follow_the_seed_and_keep_sampling_and_noise_apart():
    first, second = dp_randomness(3, reproducible=True), dp_randomness(3, reproducible=True)
    assert torch.equal(torch.rand(16, generator=first.sampling), torch.rand(16, generator=second.sampling))
    assert torch.equal(torch.randn(16, generator=first.noise), torch.randn(16, generator=second.noise))
    again = dp_randomness(3, reproducible=True)
    assert not torch.equal(torch.rand(16, generator=again.sampling), torch.rand(16, generator=again.noise))
    secret = dp_randomness(3, reproducible=False)
    assert not secret.reproducible
    assert not torch.equal(torch.rand(16, generator=secret.sampling),
                           torch.rand(16, generator=dp_randomness(3, reproducible=True).sampling))


def test_two_dp_rounds_with_the_same_configuration_and_seed_give_different_updates(tiny_config):
    config = tiny_config("seed=5", SMALL)
    first, second = _update(config), _update(config)
    assert not _same(first, second)
    assert first.metrics["epsilon"] == second.metrics["epsilon"]  # the same mechanism, accounted alike


def test_reproducible_mode_repeats_a_dp_round_bit_for_bit(tiny_config):
    config = tiny_config("seed=5", "privacy.reproducible=true", SMALL)
    assert _same(_update(config), _update(config))


def test_non_private_training_stays_seeded(tiny_config):
    config = tiny_config("seed=5", "privacy.enabled=false", SMALL)
    assert _same(_update(config), _update(config))


def test_deploy_refuses_reproducible_mode(tmp_path):
    from deployment_harness import make_consortium

    from finfed.deploy.launch import deployment_config

    consortium = make_consortium(tmp_path)
    labels = "data.labels=negative,neutral,positive"
    assert not deployment_config(consortium, None, [labels]).privacy.reproducible
    with pytest.raises(ConfigError, match=r"`privacy.reproducible` is for tests and benchmarks only"):
        deployment_config(consortium, None, [labels, "privacy.reproducible=true"])


def test_a_deployed_site_refuses_reproducible_mode_from_the_coordinator(tiny_config, tmp_path):
    config = tiny_config("privacy.reproducible=true", "data.labels=negative,neutral,positive")
    deployed = {"site-id": 1, "data-path": str(tmp_path / "bank.csv"), "budget-epsilon": 8.0}
    with pytest.raises(PrivacyError, match=r"site 1: the run sets `privacy.reproducible`.*refuses"):
        site_context(config, deployed)
    with pytest.raises(PrivacyError, match=r"site 1: the run sets `privacy.reproducible`"):
        site_context(config, {**deployed, "partition-id": 1})  # its own data: deployed, whatever else it says
    site_context(config, {"partition-id": 1})  # a simulated site (Flower gives it a partition id) accepts it


# --------------------------------------------------------------------------- the run's records, report and export

def _run(config, node_configs, *, rounds=1):
    """Real site rounds fed to the coordinator's records; returns the finished run's directory."""
    run = FederatedRun(config)
    run.start()
    sites = [site_context(config, node) for node in node_configs]
    arrays, states = run.initial_arrays(), [None] * len(sites)
    for server_round in range(1, rounds + 1):
        updates = [train_round(site, arrays, server_round=server_round, accountant_state=state)
                   for site, state in zip(sites, states)]
        states = [update.accountant_state for update in updates]
        run.record_training(server_round, [update.metrics for update in updates], [])
        arrays = updates[0].arrays
        run.central_evaluate(server_round, arrays)
    run.finish(arrays)
    return config.resolved_run_dir, updates


def test_reproducible_mode_is_labelled_in_privacy_json_reports_and_export(tiny_config, tmp_path, caplog):
    config = tiny_config("privacy.reproducible=true", "privacy.membership_audit=false", SMALL)
    with caplog.at_level("WARNING"):
        run_dir, _ = _run(config, [{"partition-id": 0}])
    assert REPRODUCIBLE_LABEL in caplog.text  # logged at the start
    privacy = read_privacy(run_dir)
    assert privacy["reproducible_dp"] is True and privacy["dp_randomness"] == REPRODUCIBLE_LABEL
    assert REPRODUCIBLE_LABEL in (run_dir / "report.md").read_text()  # the run's own short report
    paths = write_reports(run_dir)  # `finfed report`
    for kind in ("md", "html", "json"):
        assert REPRODUCIBLE_LABEL in paths[kind].read_text(), kind
    manifest = export_run(run_dir, tmp_path / "export")
    assert manifest["warning"] == REPRODUCIBLE_LABEL and manifest["privacy"]["reproducible_dp"] is True
    assert REPRODUCIBLE_LABEL in (tmp_path / "export" / "README.md").read_text()
    assert json.loads((tmp_path / "export" / EXPORT_INFO).read_text())["warning"] == REPRODUCIBLE_LABEL


def test_a_default_run_is_labelled_secret_and_never_reproducible(tiny_config, tmp_path):
    run_dir, _ = _run(tiny_config("privacy.membership_audit=false", SMALL), [{"partition-id": 0}])
    privacy = read_privacy(run_dir)
    assert privacy["reproducible_dp"] is False and "os.urandom" in privacy["dp_randomness"]
    texts = [(run_dir / "report.md").read_text(), *(p.read_text() for p in write_reports(run_dir).values())]
    assert not any(REPRODUCIBLE_LABEL in text for text in texts)
    manifest = export_run(run_dir, tmp_path / "export")
    assert "warning" not in manifest and REPRODUCIBLE_LABEL not in (tmp_path / "export" / "README.md").read_text()


# --------------------------------------------------------------------------- B: epsilon with its own delta

# A site may accept a run's delta up to its own budget's, and then reports epsilon at its own (larger) delta.
SITE_DELTA, RUN_DELTA = 1e-4, 1e-5


def test_a_site_with_its_own_delta_is_labelled_with_it_everywhere(tiny_config, tmp_path):
    config = tiny_config(f"privacy.target_delta={RUN_DELTA:.6f}", "privacy.membership_audit=false", SMALL)
    run_dir, updates = _run(config, [{"partition-id": 0, "budget-delta": SITE_DELTA}, {"partition-id": 1}], rounds=2)

    # The site sends the delta its epsilon was computed at, and that epsilon is the accountant's at it.
    own, plain = updates[0], updates[1]
    assert own.metrics["delta"] == SITE_DELTA and plain.metrics["delta"] == RUN_DELTA
    accountant = SiteAccountant.from_plain(own.accountant_state, config.privacy.accountant)
    assert own.metrics["epsilon"] == pytest.approx(accountant.epsilon(SITE_DELTA))
    assert accountant.epsilon(SITE_DELTA) < 0.95 * accountant.epsilon(RUN_DELTA)  # the label matters

    privacy = read_privacy(run_dir)
    assert privacy["run_delta"] == RUN_DELTA
    assert privacy["sites"]["0"]["delta"] == SITE_DELTA and privacy["sites"]["1"]["delta"] == RUN_DELTA
    assert privacy["sites"]["0"]["epsilon"] == pytest.approx(own.metrics["epsilon"])

    report = build_report(run_dir)
    text = render_markdown(report)
    assert "MISMATCH" not in text
    check = report["sites"]["0"]["cross_check"][config.privacy.accountant]
    assert check == pytest.approx(own.metrics["epsilon"], rel=1e-3)  # recomputed at the site's own delta
    assert f"{SITE_DELTA:g} (site's own; run: {RUN_DELTA:g})" in text  # the privacy table
    assert f"site 0 at its own delta {SITE_DELTA:g}; the other sites at the run's delta {RUN_DELTA:g}" in text
    assert f"{SITE_DELTA:g} (site's own; run: {RUN_DELTA:g})" in (run_dir / "report.md").read_text()

    manifest = export_run(run_dir, tmp_path / "export")
    sites = manifest["privacy"]["sites"]
    assert sites["0"]["delta"] == SITE_DELTA and sites["1"]["delta"] == RUN_DELTA
    assert manifest["privacy"]["run_delta"] == RUN_DELTA
    worst = max(sites.values(), key=lambda site: site["epsilon"])
    assert manifest["privacy"]["delta"] == worst["delta"]  # max_epsilon travels with its own delta
    readme = (tmp_path / "export" / "README.md").read_text()
    assert f"site 0 ε={sites['0']['epsilon']:.3f} at δ={SITE_DELTA:g}" in readme
    assert f"the run's δ={RUN_DELTA:g}" in readme

    # The cross-check can still fail: a stated epsilon that is not the recomputation is flagged.
    corrupted = read_privacy(run_dir)
    corrupted["sites"]["0"]["epsilon"] *= 1.2
    (run_dir / PRIVACY).write_text(json.dumps(corrupted))
    assert "MISMATCH" in render_markdown(build_report(run_dir))
    # ... and so does an epsilon labelled with the run's delta instead of the site's (the old bug).
    mislabelled = read_privacy(run_dir)
    mislabelled["sites"]["0"].update(epsilon=privacy["sites"]["0"]["epsilon"], delta=RUN_DELTA)
    (run_dir / PRIVACY).write_text(json.dumps(mislabelled))
    assert "MISMATCH" in render_markdown(build_report(run_dir))
