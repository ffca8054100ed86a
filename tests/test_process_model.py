"""One model per worker process (issue 14): a site's round on the cached model is the round a freshly
built model gives, and a process serving several sites and rounds builds its model once."""

from __future__ import annotations

import numpy as np

from finfed.models.adapters import exchanged_state
from finfed.site import rounds
from finfed.site.rounds import evaluate_round, site_context, train_round


def _initial(site):
    return {name: tensor.numpy() for name, tensor in exchanged_state(site.task.build_model()).items()}


def _rounds(config):
    """Site 0 round 1, site 1 round 1 (from site 0's update), site 1's evaluation, then site 0 round 2."""
    first, second = (site_context(config, {"partition-id": i}) for i in (0, 1))
    start = _initial(first)
    one = train_round(first, start, server_round=1, accountant_state=None)
    two = train_round(second, one.arrays, server_round=1, accountant_state=None)
    evaluation = evaluate_round(second, two.arrays)
    three = train_round(first, two.arrays, server_round=2, accountant_state=one.accountant_state)
    return [one, two, three], evaluation


def _fresh_model_each_call(monkeypatch):
    original = rounds._process_model

    def fresh(site):
        rounds._PROCESS_MODEL.clear()
        return original(site)
    monkeypatch.setattr(rounds, "_process_model", fresh)


def test_a_cached_model_trains_and_evaluates_exactly_as_a_fresh_one(tiny_config, monkeypatch):
    for dp in ("true", "false"):
        config = tiny_config("data.synthetic_size=120", f"privacy.enabled={dp}", "privacy.reproducible=true")
        rounds._PROCESS_MODEL.clear()
        builds = rounds.MODEL_BUILDS[0]
        cached, cached_eval = _rounds(config)
        assert rounds.MODEL_BUILDS[0] - builds == 1  # two sites, three rounds, one evaluation: one build
        with monkeypatch.context() as patch:
            _fresh_model_each_call(patch)
            fresh, fresh_eval = _rounds(config)
        assert cached_eval == fresh_eval
        for a, b in zip(cached, fresh):
            assert a.metrics == b.metrics
            assert all(np.array_equal(a.arrays[name], b.arrays[name]) for name in a.arrays)


def test_a_different_model_setting_builds_a_new_model_and_drops_the_old(tiny_config):
    rounds._PROCESS_MODEL.clear()
    for r in (4, 2):
        config = tiny_config("data.synthetic_size=120", "privacy.enabled=false", f"lora.r={r}")
        site = site_context(config, {"partition-id": 0})
        train_round(site, _initial(site), server_round=1, accountant_state=None)
        assert len(rounds._PROCESS_MODEL) == 1
        assert rounds._PROCESS_MODEL[0].key[2].r == r


def test_noise_is_calibrated_once_per_simulation_and_a_shared_value_is_checked(tmp_path, monkeypatch):
    import json

    from finfed.constants import CALIBRATION_CACHE_ENV
    from finfed.privacy import calibration

    cache = tmp_path / "calibration.json"
    monkeypatch.setenv(CALIBRATION_CACHE_ENV, str(cache))
    shape = dict(target_epsilon=8.0, target_delta=1e-5, sample_rate=0.1, steps=40, accountant="rdp")
    calibration.calibrate_noise.cache_clear()
    first = calibration.calibrate_noise(**shape)
    assert list(json.loads(cache.read_text()).values()) == [first]

    searches = []
    real_search = calibration.search_noise
    monkeypatch.setattr(calibration, "search_noise", lambda *a: searches.append(a) or real_search(*a))
    calibration.calibrate_noise.cache_clear()  # another process: it reads the file, checks, does not search
    assert calibration.calibrate_noise(**shape) == first and not searches

    key = next(iter(json.loads(cache.read_text())))
    cache.write_text(json.dumps({key: first / 4}))  # an altered file: too little noise for the target
    calibration.calibrate_noise.cache_clear()
    assert calibration.calibrate_noise(**shape) == first and len(searches) == 1
    calibration.calibrate_noise.cache_clear()
