"""finfed works as an installed wheel: no source checkout, no PYTHONPATH, from an empty folder.

The wheel is built from a copy of the package's sources and installed for real (pip, no editable
mode) into a fresh virtual environment outside the checkout. Its dependencies come from the test's
own environment (torch, Flower, ... are too big to install offline in a test): a `.pth` file puts
that environment's site-packages on the new one's path, after the new one's own. Flower's console
scripts are written into the new environment's bin/ the way pip writes them, so the SuperLink, the
simulation and Ray's workers all run the new environment's Python, which sees finfed only as the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: what a wheel is built from (pyproject's [tool.setuptools] packages and package-dir)
SOURCES = ("pyproject.toml", "README.md", "finfed", "server", "client")
TINY_RUN = ["--set", "federation.rounds=1", "--set", "data.synthetic_size=300", "--set", "train.batch_size=16",
            "--set", "privacy.membership_audit=false"]


def build_wheel(out: Path, work: Path) -> Path:
    """The wheel of a copy of the sources (setuptools writes build/ and *.egg-info beside them)."""
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, work / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(work), "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(out)], check=True, cwd=work)
    (wheel,) = out.glob("finfed-*.whl")
    return wheel


def make_environment(home: Path, wheel: Path) -> Path:
    """A fresh venv with the wheel installed and the test environment's packages behind it; its python."""
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "-q", str(wheel)], check=True)
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        check=True, capture_output=True, text=True).stdout.strip())
    (site_packages / "test-environment-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    for script in distribution("flwr").entry_points.select(group="console_scripts"):
        module, _, function = script.value.partition(":")
        path = home / "bin" / script.name
        path.write_text(f"#!{python}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
        path.chmod(0o755)
    return python


def installed_paths() -> list[str]:
    """Every source and data file the wheel must carry, at its installed path (server/ -> finfed/flower_app/server/)."""
    paths = []
    for folder, installed in (("finfed", "finfed"), ("server", "finfed/flower_app/server"),
                              ("client", "finfed/flower_app/client")):
        paths += [f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
                  for path in (ROOT / folder).rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"]
    return paths


def clean_env(bin_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}}
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return {**env, "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_the_wheel_holds_finfed_and_its_flower_apps_only(tmp_path):
    wheel = build_wheel(tmp_path / "dist", _folder(tmp_path / "src"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"finfed", wheel.name.split("-py3")[0] + ".dist-info"}, top_level  # no server/, tests/
    missing = sorted(set(installed_paths()) - set(names))
    assert not missing, (f"{wheel.name} lacks {missing}: list new packages in pyproject's [tool.setuptools] "
                         "packages and data files in its package-data")
    entry_points = zipfile.ZipFile(wheel).read(wheel.name.split("-py3")[0] + ".dist-info/entry_points.txt")
    assert b"finfed = finfed.cli:main" in entry_points


@pytest.mark.slow
def test_a_tiny_simulation_runs_from_the_installed_wheel_in_an_empty_folder(tmp_path):
    started = time.time()
    wheel = build_wheel(tmp_path / "dist", _folder(tmp_path / "src"))
    home = tmp_path / "venv"
    python = make_environment(home, wheel)
    empty = _folder(tmp_path / "empty")
    env = clean_env(home / "bin")

    where = subprocess.run([str(python), "-c", "import finfed, finfed.flower_app.server.app as s; "
                            "print(finfed.__file__); print(s.__file__)"],
                           cwd=empty, env=env, check=True, capture_output=True, text=True).stdout.split()
    for path in where:
        assert Path(path).is_relative_to(home) and not Path(path).is_relative_to(ROOT), where

    finished = subprocess.run([str(home / "bin" / "finfed"), "simulate", *TINY_RUN], cwd=empty, env=env,
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, f"finfed simulate failed:\n{finished.stdout[-4000:]}\n{finished.stderr[-4000:]}"
    (run_dir,) = (empty / "runs").iterdir()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete", status
    assert (run_dir / "model").is_dir() and (run_dir / "report.md").is_file()
    print(f"\n[timing] wheel {wheel.stat().st_size / 1e3:.0f} kB; build+install+run {time.time() - started:.0f}s")


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path
