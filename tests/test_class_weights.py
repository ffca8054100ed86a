"""`train.class_weights`: fixed per-label weights in a classifier's training loss, each record's term scaled by
its own label's weight only (so DP-SGD's per-record bound is unchanged), refused where it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finfed.errors import ConfigError
from finfed.models.adapters import exchanged_state, load_exchanged_state
from finfed.site import rounds
from finfed.site.rounds import site_context, train_round
from finfed.tasks import get_task, task_class

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


# Under DP the weights reach each record's gradient before it is clipped, so they act in full only on records
# whose weighted gradient stays within the clipping norm; the DP case here sets a norm no record reaches (and
# little noise, at epsilon 100) to show the weights travel through the DP-SGD path.
@pytest.mark.parametrize("privacy", [("privacy.enabled=false",),
                                     ("privacy.enabled=true", "privacy.max_grad_norm=100",
                                      "privacy.target_epsilon=100")], ids=["no-dp", "dp"])
def test_weighing_a_label_up_makes_the_trained_head_predict_it_more(tiny_config, privacy):
    settings = ("lora.method=head", "data.synthetic_size=200", "train.local_epochs=3", *privacy,
                "privacy.reproducible=true")
    plain = tiny_config(*settings)
    label = site_context(plain, {"partition-id": 0}).task.labels[0]
    weighted = tiny_config(*settings, f"train.class_weights={{{label}: 8}}")
    assert _predicted_share(weighted, label) > _predicted_share(plain, label) + 0.1
