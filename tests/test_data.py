"""Data: synthetic generator, partitioning, and the errors a user sees for bad input."""

import pandas as pd
import pytest

from finfed.config import load_config
from finfed.data.partition import load_federated_data, local_site, simulated_site
from finfed.data.synthetic_news import LABELS, generate_news
from finfed.errors import ConfigError, DataError
from finfed.privacy.calibration import plan_privacy
from finfed.tasks.classification import SENTENCES


def test_synthetic_news_is_deterministic_and_marked_synthetic():
    first, second = generate_news(300, 3, seed=5), generate_news(300, 3, seed=5)
    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(generate_news(300, 3, seed=6))
    assert first["synthetic"].all()
    assert set(first["label"]) == set(LABELS)


def test_synthetic_institutions_differ_in_vocabulary_and_label_mix():
    frame = generate_news(4000, 3, seed=1)
    mixes = frame.groupby("institution")["label"].value_counts(normalize=True).unstack()
    assert (mixes.max() - mixes.min()).max() > 0.15  # label skew across sites
    vocab = {site: set(" ".join(rows["text"]).split()) for site, rows in frame.groupby("institution")}
    shared = set.intersection(*vocab.values())
    assert all(len(words - shared) > 20 for words in vocab.values())  # each register has its own words


def test_default_split_is_flowertune_25_percent_seed_42():
    config = load_config(None, ["data.synthetic_size=400"])
    data = load_federated_data(config.data, 3, SENTENCES)
    assert len(data.test) == 100 and len(data.train_pool) == 300
    again = load_federated_data(load_config(None, ["data.synthetic_size=400", "name=x"]).data, 3, SENTENCES)
    assert data.test["text"].tolist() == again.test["text"].tolist()


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "column"])
def test_partitions_cover_the_training_pool_once(partitioner):
    config = load_config(None, ["data.synthetic_size=600", f"data.partitioner={partitioner}",
                                "data.validation_fraction=0.1", "data.dirichlet_alpha=5"])
    sites = [simulated_site(config.data, i, 3, SENTENCES) for i in range(3)]
    total = sum(len(s.train) + len(s.validation) for s in sites)
    assert total == len(load_federated_data(config.data, 3, SENTENCES).train_pool)
    assert all(len(s.validation) >= 1 for s in sites)


def _write_csv(tmp_path, frame, name="data.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_missing_file_is_named(tmp_path):
    config = load_config(None, ["data.source=file", f"data.path={tmp_path / 'absent.csv'}"])
    with pytest.raises(DataError, match="absent.csv does not exist"):
        load_federated_data(config.data, 2, SENTENCES)


def test_missing_column_names_the_column_and_file(tmp_path):
    path = _write_csv(tmp_path, pd.DataFrame({"sentence": ["a", "b"], "label": ["x", "y"]}))
    config = load_config(None, ["data.source=file", f"data.path={path}"])
    with pytest.raises(DataError, match=r"data.csv: missing column\(s\) \['text'\]"):
        load_federated_data(config.data, 2, SENTENCES)


def test_unknown_label_names_row_and_expected_labels(tmp_path):
    frame = pd.DataFrame({"text": ["up", "down", "flat"], "label": ["positive", "negative", "sideways"]})
    path = _write_csv(tmp_path, frame)
    config = load_config(None, ["data.source=file", f"data.path={path}",
                                "data.labels=negative,neutral,positive"])
    with pytest.raises(DataError, match=r"row 3 has unknown label 'sideways'; expected one of"):
        load_federated_data(config.data, 2, SENTENCES)
    with pytest.raises(DataError, match="unknown label 'sideways'"):
        local_site(config.data, str(path), ["negative", "neutral", "positive"], 0, SENTENCES)


def test_jsonl_and_parquet_are_read_with_configured_columns(tmp_path):
    frame = pd.DataFrame({"body": [f"text {i}" for i in range(40)], "tone": ["a", "b"] * 20})
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.parquet"):
        config = load_config(None, ["data.source=file", f"data.path={tmp_path / name}",
                                    "data.text_column=body", "data.label_column=tone",
                                    "data.partitioner=iid"])
        data = load_federated_data(config.data, 2, SENTENCES)
        assert data.labels == ["a", "b"] and len(data.train_pool) == 30


def test_empty_partition_is_refused(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(40)], "label": ["a"] * 20 + ["b"] * 20,
                          "bank": ["one"] * 40})
    path = _write_csv(tmp_path, frame)
    config = load_config(None, ["data.source=file", f"data.path={path}", "data.partitioner=dirichlet",
                                "data.dirichlet_alpha=0.01", "federation.num_sites=8"])
    with pytest.raises(DataError, match="empty partition"):
        for site in range(8):
            simulated_site(config.data, site, 8, SENTENCES)
    config = load_config(None, ["data.source=file", f"data.path={path}", "data.partition_column=bank"])
    with pytest.raises(ConfigError, match=r"has 1 distinct values \(one site each\) but `federation.num_sites` is 3"):
        simulated_site(config.data, 0, 3, SENTENCES)


def test_fewer_examples_than_a_batch_is_refused():
    config = load_config(None, ["train.batch_size=64"])
    with pytest.raises(DataError, match=r"site 2 has 50 training examples, fewer than `train.batch_size` \(64\)"):
        plan_privacy(num_records=50, train=config.train, privacy=config.privacy, rounds=3, site="site 2")
