"""benchmarks.head_ceiling: its linear ceiling and its replica of the head's federated (DP-)SGD behave."""

from __future__ import annotations

import json

import torch

from benchmarks.head_ceiling import Split, figures, linear_ceiling, replica
from finfed.config import TrainSettings


def _blobs(n: int, seed: int, labels: tuple[int, ...] = (0, 1, 2)) -> Split:
    """Three well separated clusters in 8 dimensions (a site holds only ``labels``)."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels)[torch.randint(len(labels), (n,), generator=generator)]
    centres = torch.eye(3, 8) * 4.0
    return Split(centres[y] + torch.randn(n, 8, generator=generator) * 0.5, y)


def _run(sites, **changes):
    train = TrainSettings(batch_size=32, local_epochs=2, optimizer="sgd", head_learning_rate=1.0)
    options = dict(rounds=3, train=train, sigmas=None, clip=1.0, weights=None, head=None, classes=3, seed=0)
    return replica(sites, **{**options, **changes})


def test_the_linear_ceiling_separates_separable_labels():
    ceiling = linear_ceiling(_blobs(300, 1), _blobs(100, 2), _blobs(100, 3), classes=3)
    assert ceiling["test"]["accuracy"] > 0.98
    assert ceiling["chosen_C"] in (0.1, 1.0, 10.0, 100.0)


def test_the_replica_learns_across_label_skewed_sites_and_noise_can_drown_it():
    sites = [_blobs(200, 4, (0, 1)), _blobs(200, 5, (1, 2)), _blobs(200, 6, (0, 2))]
    test = _blobs(300, 7)
    assert figures(*_run(sites), test, 3)["accuracy"] > 0.95
    assert figures(*_run(sites, sigmas=[0.5] * 3), test, 3)["accuracy"] > 0.9  # DP at a usable noise
    drowned = [figures(*_run(sites, sigmas=[200.0] * 3, seed=s), test, 3)["accuracy"] for s in range(3)]
    assert min(drowned) < 0.8  # at an absurd noise multiplier the sum of clipped gradients is lost


def test_a_given_head_is_where_the_replica_starts():
    head = (torch.randn(3, 8), torch.randn(3))
    weight, bias = _run([_blobs(50, 8)], rounds=0, head=head)
    assert torch.equal(weight, head[0]) and torch.equal(bias, head[1])


def test_the_public_sources_comparison_is_rendered_from_its_file(tmp_path):
    from benchmarks.docs import head_study_table

    studies = tmp_path / "benchmarks" / "results" / "studies"
    studies.mkdir(parents=True)
    pair = {"accuracy": 0.8, "macro_f1": 0.75}
    row = {"source": "tw-a", "source_settings": {"rounds": 2, "lora_method": "ffa", "learning_rate": 0.005,
                                                  "head_learning_rate": 0.05},
           "linear_ceiling": {"validation": {"accuracy": 0.812}, "test": {"accuracy": 0.791}},
           "validation": pair, "test": {"accuracy": 0.77, "macro_f1": 0.7}}
    (studies / "warm-sources.json").write_text(json.dumps({"recipe": "r", "seeds": 3, "sources": [row], "wall_s": 9}))
    table = head_study_table(studies.parent)
    assert "`benchmarks/results/studies/warm-sources.json`" in table
    assert "| tw-a | 2 | ffa | 0.005 | 0.812 / 0.791 | 0.800 / 0.750 | 0.770 / 0.700 |" in table
