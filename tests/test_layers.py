"""Imports point down the layers: a module imports its own package and lower layers only.

Siblings in one layer (site vs coordinator; data vs models) do not import each other; layer 0's
small modules (errors, constants, ...) are peers and may. The Flower apps' source (server/, client/)
installs as finfed.flower_app.* and sits at the top. The check reads the source (AST), so it sees
imports inside functions too.
"""

from __future__ import annotations

from pathlib import Path

from source_imports import LIBRARY, absolute_imports, source_files

ROOT = Path(__file__).resolve().parents[1]

#: lowest first; the lead keeps this list in step with PLAN.md / docs/design
LAYERS: list[list[str]] = [
    # single-module helpers (finfed.atomic, finfed.settings: the infra helper's, arriving at merge)
    ["finfed.errors", "finfed.constants", "finfed.compat", "finfed.records", "finfed.wire", "finfed.atomic",
     "finfed.settings", "finfed.lean_imports"],
    ["finfed.config"],
    ["finfed.privacy"],
    ["finfed.data", "finfed.models"],
    ["finfed.tasks"],
    ["finfed.training"],
    ["finfed.runs"],
    ["finfed.reporting"],
    ["finfed.site", "finfed.coordinator"],
    ["finfed.inference"],
    ["finfed.runtime"],
    ["finfed.deploy"],
    ["finfed.cli"],
    ["finfed.flower_app"],  # the thin Flower apps (server/, client/) may import anything in finfed
]
#: layer 0 holds single-module helpers that may use each other
PEER_LAYERS = {0}


def layer_of(module: str) -> tuple[int, str] | None:
    """(layer index, the layer's group) of a finfed module name, or None when no layer names it."""
    if module == "finfed":  # the package itself runs before any of its modules: bottom layer
        return 0, module
    for index, group in enumerate(LAYERS):
        for name in group:
            if module == name or module.startswith(name + "."):
                return index, name
    return None


def source_modules(root: Path) -> dict[Path, str]:
    """Every source file with the module name it has once installed."""
    modules = {path: ".".join(("finfed",) + path.relative_to(root / "finfed").with_suffix("").parts)
               for path in (root / "finfed").rglob("*.py")}
    for app in ("server", "client"):
        modules.update({path: ".".join(("finfed", "flower_app") + path.relative_to(root).with_suffix("").parts)
                        for path in (root / app).rglob("*.py")})
    return {path: name.removesuffix(".__init__") for path, name in modules.items()}


def layer_violations(root: Path = ROOT) -> list[str]:
    problems = []
    for path, module in sorted(source_modules(root).items()):
        own = layer_of(module)
        where = path.relative_to(root)
        if own is None:
            problems.append(f"{where}: module {module} is in no layer (add its package to LAYERS)")
            continue
        for line, target in absolute_imports(path):
            if not target.startswith("finfed."):
                continue
            theirs = layer_of(target)
            if theirs is None:
                problems.append(f"{where}:{line}: imports {target}, which is in no layer")
            elif theirs[0] > own[0]:
                problems.append(f"{where}:{line}: {module} (layer {own[0]}, {own[1]}) imports {target} "
                                f"from the higher layer {theirs[0]} ({theirs[1]})")
            elif theirs[0] == own[0] and theirs[1] != own[1] and own[0] not in PEER_LAYERS:
                problems.append(f"{where}:{line}: {module} imports its sibling {theirs[1]} "
                                f"(both layer {own[0]}); move the shared code to a lower layer")
    return problems


def test_imports_point_down_the_layers():
    problems = layer_violations()
    assert not problems, "imports that point up or sideways:\n  " + "\n  ".join(problems)


def test_the_check_catches_an_upward_and_a_sideways_import(tmp_path):
    """The check must be able to fail: data importing site (up), coordinator importing site (sideways)."""
    for name, text in {"finfed/data/bad.py": "from finfed.site.rounds import site_context\n",
                       "finfed/coordinator/bad.py": "def f():\n    import finfed.site.log\n",
                       "finfed/wire.py": "from finfed.errors import ConfigError\n",  # layer-0 peers: allowed
                       "server/app.py": "from finfed.cli.main import main\n"}.items():  # the apps: top layer
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    problems = layer_violations(tmp_path)
    assert len(problems) == 2, problems
    assert problems[0].startswith("finfed/coordinator/bad.py:2: finfed.coordinator.bad imports its sibling "
                                  "finfed.site"), problems
    assert problems[1].startswith("finfed/data/bad.py:1: finfed.data.bad (layer 3, finfed.data) imports "
                                  "finfed.site.rounds from the higher layer 8"), problems


def test_simulations_holds_configs_only():
    """The one-machine runner is library code (finfed.runtime); nothing imports a `simulations` module."""
    extra = [p.name for p in (ROOT / "simulations").iterdir() if p.suffix not in {".yaml", ".md"}]
    assert not extra, f"simulations/ should hold only YAML configs and its README, not {extra}"
    importers = [f"{path.relative_to(ROOT)}:{line}"
                 for path in source_files((*LIBRARY, "tests", "benchmarks")) for line, name in absolute_imports(path)
                 if name.split(".")[0] == "simulations"]
    assert not importers, f"imports of a `simulations` module: {importers}"
