"""Experiment configuration: validation, overrides, and the Flower run_config mirror."""

from pathlib import Path

import pytest

from finfed.config import (
    config_from_dict,
    from_run_config,
    load_config,
    save_config,
    to_run_config,
)
from finfed.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_round_trip_through_yaml_and_run_config(tmp_path):
    config = load_config(None, ["privacy.target_epsilon=3", "lora.target_modules=query,key,value"])
    assert config.privacy.target_epsilon == 3.0
    assert config.lora.target_modules == ("query", "key", "value")
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    assert from_run_config(to_run_config(config)) == config


@pytest.mark.parametrize("overrides, message", [
    (["privacy.target_epsilon=0"], "`privacy.target_epsilon` must be > 0.0 and <= 100.0, got 0.0"),
    (["privacy.target_epsilon=-1"], "`privacy.target_epsilon` must be > 0.0"),
    (["privacy.target_epsilon=abc"], "`privacy.target_epsilon` must be a number"),
    (["privacy.epsilon=3"], "`privacy.epsilon` is an unknown key; known keys here: enabled, target_epsilon"),
    (["lora.method=dora"], "`lora.method` must be one of ['ffa', 'lora', 'head']"),
    (["train.batch_size=2.5"], "`train.batch_size` must be a whole number"),
    (["privacy.enabled=yes please"], "`privacy.enabled` must be true or false"),
    (["data.source=file"], "`data.path` is required"),
    (["federation.num_sites=2", "federation.min_sites=3"], "`federation.min_sites` (3) exceeds"),
    (["novalue"], "must look like `section.key=value`"),
])
def test_bad_settings_are_refused_with_the_key_named(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


def test_unknown_section_and_key_in_yaml_name_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("privacy:\n  target_epsilon: 4\n  clip: 2\n")
    with pytest.raises(ConfigError, match=r"exp.yaml: `privacy.clip` is an unknown key"):
        load_config(path)


def test_malformed_yaml_and_missing_file_are_refused(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("privacy: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="`privacy` must be a mapping"):
        config_from_dict({"privacy": 3})


def test_shipped_simulation_configs_are_valid():
    configs = sorted((ROOT / "simulations").glob("*.yaml"))
    assert configs, "simulations/ should ship ready experiment configs"
    for path in configs:
        needs_data = any(name in path.name for name in ("phrasebank", "tatqa", "twitter"))  # real data: a path
        load_config(path, ["data.path=/tmp/x.csv"] if needs_data else [])
