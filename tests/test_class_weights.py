"""`train.class_weights`: fixed per-label weights in a classifier's training loss, each record's term scaled by
its own label's weight only (so DP-SGD's per-record bound is unchanged), refused where it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finfed.errors import ConfigError, PrivacyError
from finfed.models.adapters import exchanged_state, load_exchanged_state
from finfed.site import rounds
from finfed.site.rounds import site_context, train_round
from finfed.tasks import get_task, task_class
from finfed.training.precision import DeviceDPOptimizer

LABELS = ["negative", "neutral", "positive"]


@pytest.mark.parametrize("weights, message", [
    ("{negative: 0}", "gives label 'negative' the weight '0'; expected a number above 0"),
    ("{negative: -2}", "gives label 'negative' the weight '-2'"),
    ("{negative: many}", "gives label 'negative' the weight 'many'"),
    ("{negative: .nan}", "gives label 'negative' the weight 'nan'"),
])
def test_a_weight_that_is_not_a_positive_number_is_refused_naming_its_label(tiny_config, weights, message):
    with pytest.raises(ConfigError, match="train.class_weights") as error:
        tiny_config(f"train.class_weights={weights}")
    assert message in str(error.value)


def test_weights_reach_every_process_unchanged(tmp_path):
    """YAML and Flower's flat run config (how a ServerApp and every ClientApp get the settings) keep them."""
    from finfed.config import from_run_config, load_config, save_config, to_run_config

    config = load_config(None, ["train.class_weights={negative: 3, positive: 1.5}"])
    assert [config.train.weight_of(label) for label in LABELS] == [3.0, 1.0, 1.5]
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    assert from_run_config(to_run_config(config)) == config


def test_weights_for_labels_the_run_does_not_have_are_refused(tiny_config):
    listed = tiny_config("data.labels=[negative,neutral,positive]", "train.class_weights={negatve: 3}")
    with pytest.raises(ConfigError, match=r"names \['negatve'\], which are not among the run's labels"):
        task_class(listed)  # labels in the settings: refused before any data is read
    found = tiny_config("train.class_weights={negatve: 3}")
    with pytest.raises(ConfigError, match=r"names \['negatve'\]"):
        get_task(found, LABELS)  # labels found in the data: refused when the task is built


def test_question_answering_refuses_class_weights(tiny_config):
    with pytest.raises(ConfigError, match="`task` 'qa' has no labels to weigh"):
        task_class(tiny_config("task=qa", "data.partitioner=iid", "train.class_weights={negative: 3}"))


def test_each_records_loss_is_scaled_by_its_own_labels_weight_alone(tiny_config):
    """The batch loss is the mean of the records' own weighted losses, not normalised by the batch's weights:
    a record's gradient must not depend on which other records were drawn with it."""
    task = get_task(tiny_config("train.class_weights={negative: 3, positive: 0.5}"), LABELS)
    logits = torch.tensor([[2.0, 0.1, -1.0], [0.3, 0.2, 0.1], [-0.5, 1.5, 0.0], [0.0, 0.0, 2.0]])
    labels = torch.tensor([0, 1, 1, 2])
    plain = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = torch.tensor([3.0, 1.0, 1.0, 0.5]) * plain
    batch = task._training_loss(logits, labels)
    assert batch.item() == pytest.approx(expected.mean().item())
    singles = [task._training_loss(logits[i:i + 1], labels[i:i + 1]).item() for i in range(len(labels))]
    assert singles == pytest.approx(expected.tolist())
    unweighted = get_task(tiny_config(), LABELS)
    assert unweighted.class_weights is None
    assert unweighted._training_loss(logits, labels).item() == pytest.approx(plain.mean().item())


def _predicted_share(config, label: str) -> float:
    """A head-only round from the same start, then the share of the site's records predicted as ``label``."""
    site = site_context(config, {"partition-id": 0})
    rounds._PROCESS_MODEL.clear()
    model = site.task.build_model()
    start = {name: tensor.numpy() for name, tensor in exchanged_state(model).items()}
    trained = train_round(site, start, server_round=1, accountant_state=None)
    load_exchanged_state(model, trained.arrays)
    predicted = site.task.ordered_logits(model, site.train_examples).argmax(dim=1).numpy()
    return float(np.mean(predicted == site.task.labels.index(label)))


# Under DP the weights must act whether a record's gradient is clipped or not: one case sets a norm no record
# reaches, the other one every record exceeds (loss weights alone would then change nothing: the per-label
# clipping norms do). Epsilon 100: little noise, so the test sees the weights, not the noise.
@pytest.mark.parametrize("privacy", [("privacy.enabled=false",),
                                     ("privacy.enabled=true", "privacy.max_grad_norm=100",
                                      "privacy.target_epsilon=100"),
                                     ("privacy.enabled=true", "privacy.max_grad_norm=0.001",
                                      "privacy.target_epsilon=100")],
                         ids=["no-dp", "dp-nothing-clipped", "dp-everything-clipped"])
def test_weighing_a_label_up_makes_the_trained_head_predict_it_more(tiny_config, privacy):
    settings = ("lora.method=head", "data.synthetic_size=200", "train.local_epochs=3", *privacy,
                "privacy.reproducible=true")
    plain = tiny_config(*settings)
    label = site_context(plain, {"partition-id": 0}).task.labels[0]
    weighted = tiny_config(*settings, f"train.class_weights={{{label}: 8}}")
    assert _predicted_share(weighted, label) > _predicted_share(plain, label) + 0.1


def _clipping(max_grad_norm: float, scales: torch.Tensor | None):
    """A linear layer's per-record gradients for 3 records, and the clipped sum DeviceDPOptimizer forms."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    inputs, labels = torch.randn(3, 4) * 3, torch.tensor([2, 0, 1])  # gradients above norm 1
    single = []
    for i in range(3):  # each record's own gradient, outside Opacus
        layer.zero_grad()
        torch.nn.functional.cross_entropy(layer(inputs[i:i + 1]), labels[i:i + 1]).backward()
        single.append(torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()]))
    module = GradSampleModule(layer, loss_reduction="mean")
    optimizer = DeviceDPOptimizer(torch.optim.SGD(layer.parameters(), lr=0.1), noise_multiplier=0.0,
                                  max_grad_norm=max_grad_norm, expected_batch_size=3, loss_reduction="mean")
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(module(inputs), labels).backward()
    optimizer.record_clip_scales = scales
    optimizer.clip_and_accumulate()
    summed = torch.cat([layer.weight.summed_grad.flatten(), layer.bias.summed_grad.flatten()])
    return single, summed, optimizer


def test_per_label_clipping_norms_cap_each_record_at_its_share_of_the_norm():
    scales = torch.tensor([1.0, 0.25, 0.5])
    single, summed, optimizer = _clipping(1.0, scales)
    expected = sum(g * min(1.0, float(s) / float(g.norm())) for g, s in zip(single, scales))
    assert 0.5 < float(single[2].norm()) < 1.0  # a record under the full norm, clipped by its share alone
    torch.testing.assert_close(summed, expected, rtol=1e-4, atol=1e-5)
    assert optimizer.max_grad_norm == 1.0  # restored: the noise stays noise_multiplier * max_grad_norm
    _, unscaled, _ = _clipping(1.0, None)  # no scales: Opacus' own clipping
    torch.testing.assert_close(unscaled, sum(g * min(1.0, 1.0 / float(g.norm())) for g in single),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scales", [torch.tensor([1.0, 1.5, 0.5]), torch.tensor([1.0, 0.0, 0.5]),
                                    torch.tensor([1.0, 0.5])])
def test_a_record_can_never_get_more_than_the_clipping_norm(scales):
    with pytest.raises(PrivacyError, match=r"one per record of the batch \(3\), each in \(0, 1\]"):
        _clipping(1.0, scales)


def test_the_weights_clipping_shares_are_the_weights_over_the_largest(tiny_config):
    task = get_task(tiny_config("train.class_weights={negative: 4, positive: 2}"), LABELS)
    shares = task.record_clip_scales()({"labels": torch.tensor([0, 1, 2, 0])})
    assert shares.tolist() == [1.0, 0.25, 0.5, 1.0]
    assert get_task(tiny_config(), LABELS).record_clip_scales() is None
