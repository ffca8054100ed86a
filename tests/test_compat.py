"""finfed/compat.py: every shim against the installed Flower, Opacus and PyTorch; the version check;
and that nothing else in finfed touches those libraries' private names or their error texts."""

from __future__ import annotations

import ast
import importlib
import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, RecordDict
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from source_imports import source_files
from torch import nn

from finfed import compat
from finfed.compat import CompatibilityError, UnsupportedVersionWarning

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- versions


def test_the_installed_versions_are_the_supported_ones():
    assert compat.version_problems() == []


@pytest.mark.parametrize(("package", "version", "supported"), [
    ("flwr", "1.43.0", False), ("flwr", "1.41.2", False), ("flwr", "1.42.7", True),
    ("opacus", "1.5.3", False), ("opacus", "1.5.4", True), ("opacus", "1.6.9", True), ("opacus", "1.7.0rc1", False),
    ("torch", "2.13.0+cpu", True), ("torch", "3.0.0", False), ("torch", "2.3.1", False),
    ("ray", "2.55.1", True), ("ray", "2.56.0", False),
])
def test_a_version_outside_the_range_is_reported_naming_package_version_and_range(monkeypatch, package, version,
                                                                                supported):
    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version", lambda name: version if name == package else real(name))
    problems = compat.version_problems()
    if supported:
        assert problems == []
        return
    assert len(problems) == 1
    described = compat.SUPPORTED[package].described
    assert f"{package} {version} is installed" in problems[0] and f"supports {package} {described}" in problems[0]
    with pytest.warns(UnsupportedVersionWarning, match=f"{package} {version} is installed"):
        compat.warn_unsupported_versions()


def test_a_package_that_is_not_installed_is_not_a_version_problem(monkeypatch):
    monkeypatch.setattr(compat, "installed_version", lambda name: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.warn_unsupported_versions() == []


def test_a_private_flower_name_gone_after_an_upgrade_is_a_clear_error(monkeypatch):
    monkeypatch.delattr(SecAggPlusWorkflow, "_check_threshold")
    monkeypatch.setattr(compat, "installed_version", lambda name: "1.43.0")
    compat.check_secagg_workflow.cache_clear()
    try:
        with pytest.raises(CompatibilityError, match=r"flwr 1\.43\.0 has no SecAggPlusWorkflow\._check_threshold.*"
                                                     r"written against flwr 1\.42\.x"):
            compat.check_secagg_workflow()
    finally:
        compat.check_secagg_workflow.cache_clear()


def test_the_secagg_workflow_internals_are_there():
    compat.check_secagg_workflow.cache_clear()
    compat.check_secagg_workflow()  # raises if any is missing


# --------------------------------------------------------------------------- PyTorch

def test_generator_from_words_sets_the_whole_mt19937_state():
    words = np.arange(1, 625, dtype=np.uint64)
    first, second = compat.generator_from_words(words), compat.generator_from_words(words)
    assert torch.equal(torch.rand(5, generator=first), torch.rand(5, generator=second))
    other = words.copy()
    other[600] += 1  # one word late in the state: it reaches the stream after the first twist
    assert not torch.equal(torch.rand(700, generator=compat.generator_from_words(words)),
                           torch.rand(700, generator=compat.generator_from_words(other)))


# --------------------------------------------------------------------------- Opacus

class _Model(nn.Module):
    def __init__(self, unused_layer: bool) -> None:
        super().__init__()
        self.used = nn.Linear(3, 1)
        self.unused = nn.Linear(3, 1) if unused_layer else None  # trainable, but never reaches the loss

    def forward(self, x):
        return self.used(x)


def _dp_setup(noise: float, unused_layer: bool = False):
    torch.manual_seed(0)
    model = _Model(unused_layer)
    module = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=noise, max_grad_norm=1.0,
                            expected_batch_size=4, loss_reduction="mean")
    return model, module, optimizer


def test_opacus_missing_per_sample_gradient_is_recognised():
    model, module, optimizer = _dp_setup(1.0, unused_layer=True)
    module(torch.randn(4, 3)).sum().backward()
    with pytest.raises(ValueError) as raised:
        optimizer.step()
    assert compat.is_missing_per_sample_gradient(raised.value)
    assert not compat.is_missing_per_sample_gradient(ValueError("lr must be positive"))
    assert not compat.is_missing_per_sample_gradient(RuntimeError("Per sample gradient"))


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_empty_per_sample_gradients_make_a_noise_only_step(noise):
    model, _, optimizer = _dp_setup(noise)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad(set_to_none=True)
    compat.empty_per_sample_gradients(optimizer)
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert all(moved) if noise else not any(moved)  # zero clipped sum: only the noise moves the parameters


# --------------------------------------------------------------------------- Flower: printed output

def test_flwr_run_still_announces_the_run_id_as_finfed_reads_it():
    run = importlib.import_module("flwr.cli.run.run")

    assert 'f"Successfully started run {res.run_id}"' in inspect.getsource(run)
    assert compat.started_run_id("🎊 Successfully started run 4242\n") == "4242"
    assert compat.started_run_id("Loading project configuration...") is None
    assert compat.log_shows_started_run("a\nSuccessfully started run 7\nb") and not compat.log_shows_started_run("a")


def test_flwr_ls_json_is_read_as_flower_writes_it():
    from flwr.cli import ls
    from flwr.common.constant import Status, SubStatus

    source = inspect.getsource(ls)
    assert '"status": row.status_text' in source and '"status-details": row.details' in source
    assert '"runs": runs_list' in source
    assert f"{Status.FINISHED}:{SubStatus.COMPLETED}" == compat.FLOWER_RUN_COMPLETED
    listing = '{"success": true, "runs": [{"run-id": "1", "status": "finished:failed", "status-details": "boom"}]}'
    assert compat.listed_run_status(listing) == ("finished:failed", "boom")
    assert compat.listed_run_status('{"success": true, "runs": []}') is None
    assert compat.listed_run_status("Traceback (most recent call last)") is None


# --------------------------------------------------------------------------- Flower: internals

def test_client_app_error_code_and_address_parsing():
    from flwr.common.constant import ErrorCode

    assert compat.client_app_error_code() == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert compat.parse_flower_address("127.0.0.1:9092") == ("127.0.0.1", 9092, False)
    assert compat.parse_flower_address("[::1]:9092")[:2] == ("::1", 9092)
    assert not compat.parse_flower_address("no-port")


def test_secagg_stage_of_a_protocol_message_and_of_a_plain_one():
    names = compat.secagg_names()
    assert compat.secagg_stage(RecordDict({names.record: ConfigRecord({names.stage: names.setup})})) == "setup"
    assert compat.secagg_stage(RecordDict({"config": ConfigRecord({"stage": "setup"})})) is None


def test_grid_client_proxy_and_legacy_round_context_are_what_the_workflow_reads():
    from flwr.server.workflow.constant import (
        MAIN_CONFIGS_RECORD,
        MAIN_PARAMS_RECORD,
        Key,
    )

    from finfed.records import to_array_record

    proxy = compat.grid_client_proxy(7, grid=None, run_id=3)
    assert proxy.node_id == 7
    context = Context(run_id=3, node_id=0, node_config={}, state=RecordDict(), run_config={})
    params = to_array_record({"a": np.ones(2, dtype=np.float32)})
    legacy = compat.legacy_round_context(context, strategy=None, num_rounds=5, server_round=2, parameters=params)
    assert legacy.config.num_rounds == 5
    assert legacy.state.array_records[MAIN_PARAMS_RECORD] is params
    assert legacy.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND] == 2


def test_secagg_state_shims_on_a_real_workflow_state():
    state = WorkflowState(sampled_node_ids={1, 2, 3}, active_node_ids={1, 2}, threshold=1,
                          nid_to_neighbours={1: {1, 2, 3}, 2: {1, 2, 3}, 3: {1, 2, 3}},
                          failures=[Exception(Error(code=99, reason="refused")), Exception(Error(code=5, reason="x")),
                                    TimeoutError()])
    compat.secagg_drop_error_replies(state, 99)
    assert [compat.secagg_failure_error(f) and compat.secagg_failure_error(f).code for f in state.failures] == [5, None]
    assert compat.secagg_keep_participants(SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2), state)
    assert state.sampled_node_ids == {1, 2} and state.nid_to_neighbours == {1: {1, 2}, 2: {1, 2}}
    state.threshold = 3  # two participants cannot reach three active neighbours
    assert not compat.secagg_keep_participants(SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2), state)


def test_finfeds_spelled_out_legacy_and_secagg_names_are_flowers():
    """The wire helpers and the disclosure allow-list spell Flower's names out (an allow-list must be
    readable as it stands); this is where an upgrade that renames one shows."""
    from flwr.common import Code, FitIns, FitRes, Parameters, Status
    from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
    from flwr.compat.common.recorddict_compat import (
        fitins_to_recorddict,
        fitres_to_recorddict,
    )

    from finfed import wire
    from finfed.privacy import disclosure

    empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
    fitres = fitres_to_recorddict(FitRes(Status(Code.OK, ""), empty, 1, {}), keep_input=True)
    assert {disclosure.FITRES_NUM_EXAMPLES, disclosure.FITRES_METRICS, disclosure.FITRES_STATUS,
            disclosure.FITRES_PARAMETERS} == set(fitres.keys())
    assert {wire.RES_PARAMETERS, wire.RES_NUM_EXAMPLES, wire.RES_METRICS, wire.RES_STATUS} == set(fitres.keys())
    assert {wire.FIT_PARAMETERS, wire.FIT_CONFIG} == set(fitins_to_recorddict(FitIns(empty, {}), True).keys())
    assert compat.secagg_names().record == disclosure.SECAGG_RECORD
    assert set(disclosure.SECAGG_STAGE_KEYS) == {Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS,
                                                 Stage.UNMASK}
    flower_keys = {v for k, v in vars(Key).items() if k.isupper()}
    assert set().union(*disclosure.SECAGG_STAGE_KEYS.values()) <= flower_keys


# --------------------------------------------------------------------------- nothing else touches internals

LIBRARIES = ("flwr", "opacus", "ray", "torch")
# The documented modules finfed may import Flower and Opacus names from; anything else of theirs
# (an undocumented module, like flwr.server.workflow.constant) goes through finfed/compat.py.
PUBLIC_MODULES = {
    "flwr.app", "flwr.clientapp", "flwr.client.mod", "flwr.common", "flwr.server", "flwr.server.strategy",
    "flwr.server.workflow", "flwr.serverapp", "flwr.serverapp.strategy",
    "opacus", "opacus.accountants", "opacus.accountants.analysis.rdp", "opacus.accountants.utils",
    "opacus.optimizers",
}
COMPAT = ROOT / "finfed" / "compat.py"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library(module: str) -> str | None:
    root = module.split(".")[0]
    return root if root in LIBRARIES else None


def _import_problems(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        modules = [(alias.name, []) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        modules = [(node.module, [alias.name for alias in node.names])]
    else:
        return []
    problems = []
    for module, names in modules:
        library = _library(module)
        if library is None:
            continue
        if any(_private(part) for part in module.split(".")):
            problems.append(f"imports the private module {module}")
        problems += [f"imports the private name {module}.{name}" for name in names if _private(name)]
        if library in ("flwr", "opacus") and module not in PUBLIC_MODULES:
            problems.append(f"imports from the undocumented module {module}")
    return problems


def _library_names(tree: ast.Module) -> set[str]:
    """Names a module binds to Flower/Opacus/Ray/PyTorch objects or modules."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if _library(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _library(node.module):
            names |= {a.asname or a.name for a in node.names}
    return names


def _own_names(cls: ast.ClassDef) -> set[str]:
    """The attributes a class defines itself (methods, class variables, ``self.x = ...``)."""
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def _attribute_problems(tree: ast.Module) -> list[str]:
    library = _library_names(tree)
    if not library:
        return []
    problems = []
    # (b) a private attribute of anything but the object itself
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            problems.append(f"line {node.lineno}: reads the private attribute .{node.attr}")
    # (c) a private attribute a Flower/Opacus base class defines, reached through self
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        bases = {b.id if isinstance(b, ast.Name) else getattr(b.value, "id", None) for b in cls.bases
                 if isinstance(b, (ast.Name, ast.Attribute))}
        if not bases & library:
            continue
        own = _own_names(cls)
        problems += [f"line {n.lineno}: {cls.name} uses its library base's private self.{n.attr}"
                     for n in ast.walk(cls) if isinstance(n, ast.Attribute) and _private(n.attr)
                     and isinstance(n.value, ast.Name) and n.value.id == "self" and n.attr not in own]
    return problems


def _error_text_problems(tree: ast.Module) -> list[str]:
    """`"..." in str(error)` inside `except ... as error`: matching a library's message text."""
    problems = []
    for handler in (n for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler) and n.name):
        for node in ast.walk(handler):
            if not (isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)):
                continue
            for side in node.comparators:
                if (isinstance(side, ast.Call) and isinstance(side.func, ast.Name) and side.func.id == "str"
                        and side.args and isinstance(side.args[0], ast.Name) and side.args[0].id == handler.name):
                    problems.append(f"line {node.lineno}: matches the text of the exception {handler.name}")
    return problems


def internals_problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems = [f"line {n.lineno}: {p}" for n in ast.walk(tree) for p in _import_problems(n)]
    return problems + _attribute_problems(tree) + _error_text_problems(tree)


def _sources() -> list[Path]:
    return [path for path in source_files() if path != COMPAT]


def test_only_finfed_compat_touches_library_internals():
    found = {str(p.relative_to(ROOT)): problems for p in _sources() if (problems := internals_problems(p))}
    assert found == {}, "use (or add) a shim in finfed/compat.py:\n" + "\n".join(
        f"{path}: {problem}" for path, problems in found.items() for problem in problems)


@pytest.mark.parametrize(("code", "expected"), [
    ("from flwr.server.workflow.constant import Key", "undocumented module flwr.server.workflow.constant"),
    ("from flwr.app import _helper", "private name flwr.app._helper"),
    ("import ray._private.services", "private module ray._private.services"),
    ("from opacus.optimizers import DPOptimizer\n\ndef f(o):\n    return o._get_flat_grad_sample", "._get_flat"),
    ("from flwr.serverapp.strategy import FedAvg\n\nclass A(FedAvg):\n    def f(self):\n"
     "        return self._construct_messages()", "private self._construct_messages"),
    ("def f():\n    try:\n        pass\n    except ValueError as e:\n        if 'x' in str(e):\n            raise",
     "matches the text of the exception e"),
])
def test_the_internals_check_can_fail(tmp_path, code, expected):
    path = tmp_path / "module.py"
    path.write_text(code + "\n", encoding="utf-8")
    assert any(expected in problem for problem in internals_problems(path)), internals_problems(path)


def test_the_internals_check_allows_a_class_its_own_private_names(tmp_path):
    path = tmp_path / "module.py"
    path.write_text("from flwr.serverapp.strategy import FedAvg\n\nclass A(FedAvg):\n    def __init__(self):\n"
                    "        self._mine = 1\n\n    def _helper(self):\n        return self._mine + self.__class__.x\n",
                    encoding="utf-8")
    assert internals_problems(path) == []
