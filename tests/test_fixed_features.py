"""A head-only round trains the head on features computed once and kept (finfed.models.fixed_features):
the same DP-SGD as running the whole model at every step, for a fraction of the backbone's passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finfed.models.adapters import exchanged_state
from finfed.models.fixed_features import HeadOnFeatures, has_fixed_backbone
from finfed.site import rounds
from finfed.site.rounds import site_context, train_round
from finfed.tasks.base import Task, TrainingView
from finfed.tasks.classification import ClassificationTask

HEAD_ONLY = ("lora.method=head", "data.synthetic_size=160", "privacy.reproducible=true")


def _start(site) -> dict[str, np.ndarray]:
    """The coordinator's tensors, with nonzero fixed adapters (as after a warm start): the features must
    come from the backbone with these loaded, not from a freshly built one."""
    generator = torch.Generator().manual_seed(3)
    state = exchanged_state(site.task.build_model())
    return {name: (torch.randn(t.shape, generator=generator) * 0.05 if "lora_B" in name else t).numpy()
            for name, t in state.items()}


def _two_rounds(config):
    site = site_context(config, {"partition-id": 0})
    rounds._PROCESS_MODEL.clear()
    one = train_round(site, _start(site), server_round=1, accountant_state=None)
    two = train_round(site, one.arrays, server_round=2, accountant_state=one.accountant_state)
    return one, two


@pytest.mark.parametrize("dp, weights", [("true", ""), ("false", ""), ("true", "{negative: 3}")])
def test_a_head_only_round_on_cached_features_equals_the_whole_model_round(tiny_config, monkeypatch, dp, weights):
    config = tiny_config(*HEAD_ONLY, f"privacy.enabled={dp}", f"train.class_weights={weights or '{}'}")
    cached = _two_rounds(config)
    with monkeypatch.context() as patch:  # rounds as before the feature view: every step runs the backbone
        patch.setattr(ClassificationTask, "training_view", Task.training_view)
        whole = _two_rounds(config)
    for a, b in zip(cached, whole):
        assert a.metrics.keys() == b.metrics.keys()
        for key in a.metrics:  # epsilon, steps, examples: the same mechanism, accounted the same way
            assert a.metrics[key] == pytest.approx(b.metrics[key], rel=1e-5), key
        for name in a.arrays:
            np.testing.assert_allclose(a.arrays[name], b.arrays[name], rtol=1e-4, atol=1e-6, err_msg=name)
    # The head moved, the fixed adapters came back exactly as sent.
    start = _start(site_context(config, {"partition-id": 0}))
    head = [n for n in start if "modules_to_save" in n]
    assert head and all(not np.array_equal(cached[0].arrays[n], start[n]) for n in head)
    assert all(np.array_equal(cached[0].arrays[n], start[n]) for n in start if "lora_B" in n)


def test_only_a_head_only_model_gets_the_feature_view(tiny_config):
    for method, expected in (("head", HeadOnFeatures), ("ffa", None)):
        config = tiny_config(f"lora.method={method}", "data.synthetic_size=80")
        site = site_context(config, {"partition-id": 0})
        model = site.task.build_model()
        view = site.task.training_view(model, site.train_examples)
        assert isinstance(view, TrainingView) and has_fixed_backbone(model) == (method == "head")
        if expected is None:
            assert view.module is model and view.examples is site.train_examples
        else:
            assert isinstance(view.module, expected) and len(view.examples) == len(site.train_examples)
            trainable = {n for n, p in view.module.named_parameters() if p.requires_grad}
            assert trainable and all("modules_to_save" in n for n in trainable)  # the head's learning rate


def test_features_match_the_models_own_pooled_output(tiny_config):
    """The cached features put through the head give the model's own logits, example by example."""
    config = tiny_config("lora.method=head", "data.synthetic_size=80")
    site = site_context(config, {"partition-id": 0})
    model = site.task.build_model()
    view = site.task.training_view(model, site.train_examples)
    model.eval()
    view.module.eval()
    with torch.no_grad():
        from_features = view.module(torch.stack([item["features"] for item in view.examples]))
    expected = site.task.ordered_logits(model, site.train_examples)
    torch.testing.assert_close(from_features, expected, rtol=1e-4, atol=1e-5)


def test_features_are_computed_once_while_the_fixed_adapters_stay_and_again_when_they_change(tiny_config,
                                                                                              monkeypatch):
    from finfed.models import fixed_features

    computed = []
    real = fixed_features.pooled_features
    monkeypatch.setattr("finfed.tasks.classification.pooled_features",
                        lambda *args: computed.append(1) or real(*args))
    config = tiny_config(*HEAD_ONLY, "federation.rounds=3")
    site = site_context(config, {"partition-id": 0})
    rounds._PROCESS_MODEL.clear()
    start = _start(site)
    one = train_round(site, start, server_round=1, accountant_state=None)
    two = train_round(site, one.arrays, server_round=2, accountant_state=one.accountant_state)
    assert len(computed) == 1  # the coordinator sent the same fixed adapters: the features still hold
    moved = {name: value + 0.01 if "lora_B" in name else value for name, value in two.arrays.items()}
    train_round(site, moved, server_round=3, accountant_state=two.accountant_state)
    assert len(computed) == 2  # other fixed adapters, other features
    other = site_context(config, {"partition-id": 1})  # another site's records, in the same process
    train_round(other, moved, server_round=3, accountant_state=None)
    assert len(computed) == 3


def test_a_head_only_models_evaluation_uses_kept_features_and_matches_the_whole_model(tiny_config, monkeypatch):
    config = tiny_config("lora.method=head", "data.synthetic_size=80")
    site = site_context(config, {"partition-id": 0})
    model = site.task.build_model()
    computed = []
    real = site.task._pooled
    monkeypatch.setattr(site.task, "_pooled", lambda *args: computed.append(1) or real(*args))
    first = site.task.evaluate(model, site.validation_examples, per_label=True)
    again = site.task.evaluate(model, site.validation_examples, per_label=True)
    assert first == again and len(computed) == 1
    with monkeypatch.context() as patch:  # the whole model at every batch
        patch.setattr("finfed.tasks.classification.features_fit", lambda *args: False)
        whole = site.task.evaluate(model, site.validation_examples, per_label=True)
    assert first.keys() == whole.keys()
    assert all(first[k] == pytest.approx(whole[k], abs=1e-5) for k in first)


def test_too_many_records_to_keep_train_the_whole_model(tiny_config, monkeypatch):
    from finfed.models import fixed_features

    config = tiny_config("lora.method=head", "data.synthetic_size=80")
    site = site_context(config, {"partition-id": 0})
    model = site.task.build_model()
    width = model.get_base_model().encoder.config.hidden_size
    monkeypatch.setattr(fixed_features, "MAX_FEATURE_BYTES", (len(site.train_examples) - 1) * width * 4)
    assert site.task.training_view(model, site.train_examples).module is model
