"""The processes finfed starts to plan, train and evaluate leave the optional int8 library (torchao) out of
their imports (84 MB and 0.6 s each: finfed/lean_imports.py); every other process keeps it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from finfed.deploy.commands import DEPLOY_ENV
from finfed.lean_imports import WITHOUT_INT8_ENV
from finfed.runtime.local_engine import simulation_env

pytest.importorskip("torchao")  # without it installed there is nothing to leave out

# What a ClientApp or ServerApp process does first: finfed, then a model's modules.
LOAD_A_MODEL = "import sys, finfed, transformers.modeling_utils, peft; print(sys.modules.get('torchao') is not None)"
# The planning child: find_spec runs in the spawned child (this process has no PyTorch), its answer printed here.
PLAN_IN_A_CHILD = ("import importlib.util; from finfed.runtime.isolated import call_isolated; "
                   "print(call_isolated(importlib.util.find_spec, 'torchao') is not None)")


def _python(code: str, env: dict[str, str]) -> bool:
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True"


def _env_without_the_flag() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in WITHOUT_INT8_ENV}


def test_the_simulation_engines_processes_load_a_model_without_torchao(tmp_path):
    assert not _python(LOAD_A_MODEL, simulation_env(tmp_path))


def test_a_process_finfed_did_not_start_for_an_engine_keeps_torchao_for_int8():
    assert _python(LOAD_A_MODEL, _env_without_the_flag())


def test_the_planning_child_leaves_torchao_out_and_its_parent_keeps_it():
    assert not _python(PLAN_IN_A_CHILD, _env_without_the_flag())
    assert _python("import importlib.util; print(importlib.util.find_spec('torchao') is not None)",
                   _env_without_the_flag())


def test_deployed_sites_and_coordinator_start_their_apps_without_torchao():
    assert WITHOUT_INT8_ENV.items() <= DEPLOY_ENV.items()


def test_an_int8_export_in_a_shell_that_exported_the_apps_variable_brings_torchao_back(tmp_path):
    code = ("import importlib.util, finfed.cli.main; from finfed.lean_imports import bring_back_int8_library; "
            "print(bring_back_int8_library() and importlib.util.find_spec('torchao') is not None)")
    assert _python(code, simulation_env(tmp_path))


def test_where_it_is_too_late_to_bring_torchao_back_the_export_says_why(monkeypatch):
    import transformers  # noqa: F401  (imported: too late to bring it back)

    from finfed.errors import RunError
    from finfed.inference.export import torchao_version
    from finfed.lean_imports import bring_back_int8_library

    monkeypatch.setitem(sys.modules, "torchao", None)
    assert not bring_back_int8_library()
    with pytest.raises(RunError, match="FINFED_WITHOUT_INT8=1"):
        torchao_version()
