"""Only finfed/tasks/ knows which tasks exist: no code elsewhere branches on a task's name.

Everything task-specific is an attribute or method of finfed.tasks.Task; code outside
the package asks the task (``task.records``, ``task.needs_labels``, ...). This test scans
the syntax tree of finfed/, server/ and client/ (finfed/tasks/ excepted) for what a
task-name branch looks like: a comparison with, or ``case`` on, a registered task's name;
a comparison of a ``task`` value (``config.task``, ``manifest["task"]``, ``task``) with
anything; a dict keyed by task names; a lookup keyed by a ``task`` value.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
from source_imports import source_files

from finfed.config import DataSettings, ExperimentConfig
from finfed.tasks import task_named, task_names

ROOT = Path(__file__).resolve().parents[1]
OWNER = ROOT / "finfed" / "tasks"


def _is_task_value(node: ast.AST) -> bool:
    """``config.task``, ``spec.task``, ``manifest["task"]``, ``task``: a value that holds a task's name."""
    if isinstance(node, ast.Attribute):
        return node.attr == "task"
    if isinstance(node, ast.Name):
        return node.id == "task"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "task"
    return False


def _names_a_task(node: ast.AST, names: set[str]) -> bool:
    """A task's name as a constant, or a tuple/list/set of constants holding one."""
    if isinstance(node, ast.Constant):
        return node.value in names
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_task(element, names) for element in node.elts)
    return False


def task_branches(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, what) of every task-name branch in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_names_a_task(op, names) for op in operands):
                found.append((node.lineno, "compares with a task's name"))
            elif any(_is_task_value(op) for op in operands) and not any(
                    isinstance(op, ast.Constant) and op.value is None for op in operands):
                found.append((node.lineno, "compares a task value"))
        elif isinstance(node, ast.match_case) and _names_a_task(getattr(node.pattern, "value", None), names):
            found.append((node.pattern.lineno, "matches a task's name"))
        elif isinstance(node, ast.Dict) and any(key is not None and _names_a_task(key, names) for key in node.keys):
            found.append((node.lineno, "a dict keyed by task names"))
        elif isinstance(node, ast.Subscript) and _is_task_value(node.slice):
            found.append((node.lineno, "a lookup keyed by a task value"))
    return found


def scanned_files() -> list[Path]:
    return [path for path in source_files() if OWNER not in path.parents]


def test_no_code_outside_the_task_package_branches_on_a_task_name():
    names = set(task_names())
    problems = [f"{path.relative_to(ROOT)}:{line}: {what}" for path in scanned_files()
                for line, what in task_branches(path.read_text(encoding="utf-8"), names)]
    assert not problems, ("task-specific behaviour belongs behind finfed.tasks.Task; found:\n"
                          + "\n".join(problems))


@pytest.mark.parametrize("code", [
    'if config.task == "qa": pass',
    'if "qa" != task: pass',
    'if config.task in ("classification",): pass',
    'x = spec.task != other',
    'x = manifest["task"] == name',
    'DEFAULTS = {"classification": 64, "qa": 192}',
    'n = DEFAULTS[config.task]',
    'n = SIZES[manifest["task"]]',
    'match config.task:\n    case "qa": pass',
])
def test_the_scan_finds_each_kind_of_task_branch(code):
    assert task_branches(code, {"classification", "qa"}), code


@pytest.mark.parametrize("code", [
    "cls = task_named(config.task)",           # the registry lookup: the one way to ask
    "task = get_task(config, labels)",
    "if task.needs_labels: pass",
    'if config.task is None: pass',
    'columns = {"text": 1, "label": 2}',
    'settings = {"task": config.task}',          # recording the name is no branch
    'x = "quality" == word',
])
def test_the_scan_leaves_the_registry_lookup_and_task_attributes_alone(code):
    assert not task_branches(code, {"classification", "qa"}), code


def test_the_task_setting_offers_exactly_the_registered_tasks():
    # config sits below finfed.tasks, so it lists the names itself; they must agree with the registry.
    annotation = typing.get_type_hints(ExperimentConfig)["task"]
    assert set(typing.get_args(annotation)) == set(task_names())


def test_the_settings_help_states_each_tasks_own_defaults():
    # The defaults live on the task classes; the help text (and the docs made from it) must say the same.
    fields = {field.name: field.metadata["help"] for field in dataclasses.fields(DataSettings)}
    for name in task_names():
        task = task_named(name)
        assert f"{name} {task.default_max_length}" in fields["max_length"]
        assert f"{name} {task.records.synthetic_size}" in fields["synthetic_size"]
