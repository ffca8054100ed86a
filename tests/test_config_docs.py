"""docs/configuration.md is rendered from the settings' own help text and must not go stale."""

import dataclasses
import typing
from pathlib import Path

from finfed.cli.config_docs import COMMAND, render
from finfed.config import ExperimentConfig
from finfed.deploy.consortium import ConsortiumFile, SiteEntries
from finfed.deploy.site_config import SiteFile

ROOT = Path(__file__).resolve().parents[1]


def _settings(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[spec.name]):
            yield from _settings(hints[spec.name], f"{prefix}{spec.name}.")
        else:
            yield prefix + spec.name, spec


def test_configuration_reference_is_current():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert text == render(), f"docs/configuration.md is stale: regenerate it with `{COMMAND}`"


def test_every_setting_has_help_text_and_a_row_in_the_reference():
    rendered = render()
    for cls in (ExperimentConfig, SiteFile, ConsortiumFile, SiteEntries):
        for key, spec in _settings(cls):
            assert len(spec.metadata.get("help", "")) >= 20, f"{cls.__name__} `{key}` needs help text"
    for cls in (ExperimentConfig, SiteFile):
        for key, _ in _settings(cls):
            assert f"| `{key.rsplit('.', 1)[-1]}` |" in rendered, key
    assert "| `target_epsilon` | number | `8.0` | > 0.0 and <= 100.0 |" in rendered
    assert "| `budget_epsilon` | number | **required** | > 0.0 |" in rendered
