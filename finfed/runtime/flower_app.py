"""The Flower app finfed submits: a manifest that names the installed ServerApp and ClientApp.

The app bundle (FAB) finfed gives Flower carries only this manifest, no code: its components are modules
of the finfed release installed where the app runs, so a site runs the code its bank installed, and
simulation and deployment run the very same two apps. Flower 1.42 does not pin which bundle a SuperNode
accepts, so a coordinator that submitted a bundle with code of its own could still have it run at the
sites: docs/privacy.md states this trust assumption.
"""

from __future__ import annotations

from pathlib import Path

import tomli_w

import finfed
from finfed.config import ExperimentConfig, to_run_config

SERVER_APP = "finfed.flower_app.server.app:app"
CLIENT_APP = "finfed.flower_app.client.app:app"
APP_FOLDER = "flower-app"


def manifest() -> dict:
    """The app's ``pyproject.toml``: its name, finfed's version and every setting with its default."""
    return {
        "project": {"name": "finfed", "version": _flower_version(finfed.__version__),
                    "description": "finfed's federated DP fine-tuning app (code: the installed finfed)",
                    "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "finfed",
            "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
            "config": to_run_config(ExperimentConfig()),
        }}},
    }


def write_app(parent: Path) -> Path:
    """Write the app folder (just its manifest) under ``parent``; return the folder for `flwr run`."""
    folder = Path(parent) / APP_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(tomli_w.dumps(manifest()), encoding="utf-8")
    return folder


def _flower_version(version: str) -> str:
    """Flower wants a plain ``X.Y.Z`` app version; local or unknown builds map to their release part."""
    release = version.split("+")[0]
    parts = [part for part in release.split(".") if part.isdigit()]
    return ".".join((parts + ["0", "0", "0"])[:3]) if parts else "0.0.0"
