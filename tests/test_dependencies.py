"""pyproject.toml declares exactly the third-party packages finfed's code imports."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from source_imports import LIBRARY, absolute_imports, source_files

ROOT = Path(__file__).resolve().parents[1]
#: declared, never imported, and why
NOT_IMPORTED = {"pyarrow": "pandas.read_parquet's engine for `.parquet` data files"}


def distribution_name(requirement: str) -> str:
    """The normalised project name of a PEP 508 requirement ("flwr[simulation]>=1.42" -> "flwr")."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group()).lower()


def imported_top_level_names(folders=LIBRARY) -> dict[str, str]:
    """Each third-party top-level module imported under the folders, with one file importing it."""
    found = {}
    for path in source_files(folders):
        for _, name in absolute_imports(path):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in {"finfed", "server", "client"}:
                found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def imported_distributions() -> dict[str, str]:
    """The installed distribution behind each imported module, e.g. yaml -> pyyaml."""
    providers = importlib.metadata.packages_distributions()
    found = {}
    for module, where in imported_top_level_names().items():
        assert module in providers, f"{where} imports {module!r}, which no installed distribution provides"
        for distribution in providers[module]:
            found[distribution_name(distribution)] = where
    return found


def declared() -> set[str]:
    """Core dependencies and the optional features' extras (not `dev`: tests and tools only)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [requirement for name, requirements in project.get("optional-dependencies", {}).items()
              if name != "dev" for requirement in requirements]
    return {distribution_name(requirement) for requirement in [*project["dependencies"], *extras]}


def test_every_imported_package_is_declared():
    missing = {name: where for name, where in imported_distributions().items() if name not in declared()}
    assert not missing, f"imported but not in [project] dependencies: {missing}"


def test_every_declared_package_is_imported():
    unused = declared() - set(imported_distributions()) - set(NOT_IMPORTED)
    assert not unused, f"declared in [project] dependencies but never imported: {sorted(unused)}"


def test_requirement_names_are_normalised():
    assert distribution_name("flwr[simulation]>=1.42,<1.43") == "flwr"
    assert distribution_name("tomli_w>=1") == "tomli-w"
    assert distribution_name("PyYAML") == "pyyaml"
