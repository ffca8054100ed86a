"""A reproducible run's figures are pinned: a change meant to keep behaviour (a refactor) fails here if it
changes what finfed computes: the global model's metrics after each round, or any site's epsilon.

The figures were recorded on the tiny random BERT of conftest.py, in-process (tests/inprocess_grid.py), with
`privacy.reproducible` on (seeded DP randomness: test mode only). They were the same before and after the
package layout of issue 10. Opacus, PyTorch or transformers upgrades may legitimately move the last digits:
then re-record them and say why in the commit. Re-recorded when the noise search changed from Opacus'
bisection to finfed.privacy.calibration.search_noise: another noise multiplier within the same tolerance
(epsilon in [target - 0.01, target]), so the losses moved in the fifth digit.
"""

import math

from inprocess_grid import serve

from finfed.runs.outputs import read_metrics, read_privacy

CENTRAL = [  # round -> accuracy, macro_f1, loss
    (0, {"accuracy": 0.25, "macro_f1": 0.19444444444444442, "loss": 1.1152952909469604}),
    (1, {"accuracy": 0.39, "macro_f1": 0.1870503597122302, "loss": 1.2434582710266113}),
    (2, {"accuracy": 0.39, "macro_f1": 0.1870503597122302, "loss": 1.2270926237106323}),
]
SITE_EPSILON = {"0": 7.994912, "1": 7.99208}


def test_a_reproducible_run_gives_the_pinned_figures(tiny_config):
    config = tiny_config("privacy.reproducible=true", "privacy.membership_audit=false")
    serve(config)
    history = read_metrics(config.resolved_run_dir)
    assert [record["round"] for record in history] == [r for r, _ in CENTRAL]
    for record, (_, central) in zip(history, CENTRAL):
        for name, value in central.items():
            assert math.isclose(record["central"][name], value, rel_tol=1e-6), (record["round"], name)
    sites = read_privacy(config.resolved_run_dir)["sites"]
    assert {site_id: round(site["epsilon"], 6) for site_id, site in sites.items()} == SITE_EPSILON
