"""Adapters: FFA-LoRA trains only B and the head, identically initialised at every site; `head` trains the head."""

import numpy as np
import pytest
import torch

from finfed.errors import TrainingError
from finfed.models.adapters import (
    exchanged_state,
    frozen_adapter_fingerprint,
    load_exchanged_state,
)
from finfed.tasks import get_task

LABELS = ["negative", "neutral", "positive"]


def test_ffa_trains_only_lora_b_and_head(tiny_config):
    model = get_task(tiny_config(), LABELS).build_model()
    names = set(exchanged_state(model))
    assert names and all("lora_B" in n or "classifier.modules_to_save" in n for n in names)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_plain_lora_also_trains_a(tiny_config):
    model = get_task(tiny_config("lora.method=lora"), LABELS).build_model()
    assert any("lora_A" in n for n in exchanged_state(model))


def test_every_site_builds_the_same_frozen_a_and_a_different_seed_does_not(tiny_config):
    first = get_task(tiny_config(), LABELS).build_model()
    torch.manual_seed(999)  # global RNG state must not matter
    second = get_task(tiny_config(), LABELS).build_model()
    other = get_task(tiny_config("lora.init_seed=5"), LABELS).build_model()
    assert frozen_adapter_fingerprint(first) == frozen_adapter_fingerprint(second)
    assert frozen_adapter_fingerprint(first) != frozen_adapter_fingerprint(other)


def test_ffa_training_leaves_a_untouched_so_averaging_b_is_exact(tiny_config):
    """FedAvg of B equals FedAvg of B @ A only if A never moves: check it after a real round."""
    from finfed.site.rounds import site_context, train_round

    config = tiny_config()
    site = site_context(config, {"partition-id": 0})
    model = site.task.build_model()
    update = train_round(site, {k: v.numpy() for k, v in exchanged_state(model).items()},
                         server_round=1, accountant_state=None)
    assert not any("lora_A" in name for name in update.arrays)
    trained = site.task.build_model()
    load_exchanged_state(trained, update.arrays)
    assert frozen_adapter_fingerprint(trained) == frozen_adapter_fingerprint(model)
    changed = [n for n in update.arrays if not np.array_equal(update.arrays[n], exchanged_state(model)[n].numpy())]
    assert any("lora_B" in n for n in changed) and any("classifier" in n for n in changed)


def test_head_method_trains_only_the_head_and_sends_the_coordinators_adapters_back_unchanged(tiny_config):
    """`lora.method: head`: the adapters cross the wire (a warm start's reach every site) but never move,
    and DP-SGD sees only the head (Opacus clips and noises exactly the tensors that require a gradient)."""
    from finfed.site.rounds import site_context, train_round

    config = tiny_config("lora.method=head")
    site = site_context(config, {"partition-id": 0})
    model = site.task.build_model()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in exchanged_state(model) if "classifier.modules_to_save" in n}
    sent = {k: v.numpy() for k, v in exchanged_state(model).items()}
    adapters = [n for n in sent if "lora_B" in n]
    assert adapters and len(adapters) + 2 == len(sent)  # every B, and the head's weight and bias
    rng = np.random.default_rng(0)
    sent = {k: (rng.normal(size=v.shape).astype(np.float32) * 0.05 if "lora_B" in k else v) for k, v in sent.items()}
    update = train_round(site, sent, server_round=1, accountant_state=None)
    assert update.arrays.keys() == sent.keys()
    assert all(np.array_equal(update.arrays[n], sent[n]) for n in adapters)
    assert any(not np.array_equal(update.arrays[n], sent[n]) for n in sent if "classifier" in n)


def test_head_method_runs_the_fixed_backbone_as_at_inference_while_the_head_trains(tiny_config):
    """No dropout inside a backbone nothing trains: the head learns on the features it is used on."""
    from finfed.training.local import _check_private_setup, _fixed_backbone_as_at_inference

    model = get_task(tiny_config("lora.method=head"), LABELS).build_model()
    model.train()
    _fixed_backbone_as_at_inference(model)
    encoder = model.get_base_model().encoder
    assert not any(m.training for m in encoder.modules())
    assert model.get_base_model().classifier.training and model.get_base_model().dropout.training
    _check_private_setup(model, "mean")  # Opacus needs train mode only where a tensor trains
    ffa = get_task(tiny_config(), LABELS).build_model()
    ffa.train()
    _fixed_backbone_as_at_inference(ffa)
    assert all(m.training for m in ffa.modules())  # adapters train: dropout stays where it was


def test_the_coordinator_keeps_the_fixed_adapters_whatever_the_aggregate_says(tiny_config):
    from finfed.coordinator.run import FederatedRun

    run = FederatedRun(tiny_config("lora.method=head"))
    before = run.initial_arrays()
    moved = {name: value + 1.0 for name, value in before.items()}
    kept = run.keep_fixed(moved, before)
    assert all(np.array_equal(kept[n], before[n]) for n in before if "lora_B" in n)
    assert all(np.array_equal(kept[n], moved[n]) for n in before if "lora_B" not in n)
    ffa = FederatedRun(tiny_config())
    assert ffa.keep_fixed(moved, before) == moved  # nothing is fixed under ffa


def test_loading_mismatched_tensors_is_refused(tiny_config):
    model = get_task(tiny_config(), LABELS).build_model()
    arrays = {k: v.numpy() for k, v in exchanged_state(model).items()}
    name = next(iter(arrays))
    with pytest.raises(TrainingError, match="missing"):
        load_exchanged_state(model, {k: v for k, v in arrays.items() if k != name})
    with pytest.raises(TrainingError, match="unexpected"):
        load_exchanged_state(model, {**arrays, "extra.weight": np.zeros(2, dtype=np.float32)})
    with pytest.raises(TrainingError, match="shape"):
        load_exchanged_state(model, {**arrays, name: np.zeros((1, 1), dtype=np.float32)})
    load_exchanged_state(model, arrays)


def test_a_head_name_that_matches_no_module_is_refused_not_left_frozen(tiny_config):
    """peft silently ignores a `modules_to_save` name that matches nothing: the head would stay random."""
    from finfed.models.adapters import add_adapters

    config = tiny_config()
    base = get_task(config, LABELS).build_base_model()
    with pytest.raises(TrainingError, match="no task head 'qa_outputs'"):
        add_adapters(base, config.lora, head="qa_outputs")
