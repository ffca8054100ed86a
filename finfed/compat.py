"""The few places finfed relies on another library's internals, each with the reason why.

Nothing else in finfed may use private (underscore) or undocumented layouts of Flower,
Opacus, Ray or PyTorch, parse what Flower prints, or match a library's error text
(tests/test_compat.py enforces it); when one of these breaks on an upgrade, it breaks here,
loudly: a version outside ``SUPPORTED`` is warned about once per process, and a private
name that is gone raises ``CompatibilityError`` naming the package, its version and what
finfed needed it for.

Flower, Opacus, PyTorch and NumPy are imported inside the functions that need them: this module
is imported by processes (a site's message handler, the CLI at start-up) that must not pay for
them when unused.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re
import time
import warnings
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

from finfed.errors import FinfedError

if TYPE_CHECKING:
    import numpy as np
    import torch

# --------------------------------------------------------------------------- versions


class Supported(NamedTuple):
    lowest: str  # inclusive
    below: str  # exclusive
    described: str  # as a person would say it


# What this module was written and tested against (pyproject.toml pins the same ranges).
SUPPORTED = {
    "flwr": Supported("1.42", "1.43", "1.42.x"),
    "opacus": Supported("1.5.4", "1.7", "1.5.4 to 1.6.x"),
    "torch": Supported("2.4", "3", "2.x from 2.4"),
    "ray": Supported("2.55", "2.56", "2.55.x (flwr 1.42's simulation extra)"),
}


class CompatibilityError(FinfedError, RuntimeError):
    """An installed library no longer has the internal shape finfed relies on."""


class UnsupportedVersionWarning(UserWarning):
    """An installed library's version is outside the range finfed was written against."""


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version (``2.13.0+cpu`` -> (2, 13, 0); ``1.7.0rc1`` -> (1, 7, 0))."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def version_problems() -> list[str]:
    """One line per installed package outside its supported range (a missing package is not one)."""
    problems = []
    for package, supported in SUPPORTED.items():
        version = installed_version(package)
        if version is None:
            continue
        if not _release(supported.lowest) <= _release(version) < _release(supported.below):
            problems.append(f"{package} {version} is installed, but finfed supports {package} {supported.described} "
                            f"(>={supported.lowest},<{supported.below}); the internals finfed/compat.py relies on "
                            "may have changed")
    return problems


def warn_unsupported_versions() -> list[str]:
    for problem in (problems := version_problems()):
        warnings.warn(problem, UnsupportedVersionWarning, stacklevel=2)
    return problems


def require(present: bool, package: str, needed: str, purpose: str) -> None:
    """Raise a ``CompatibilityError`` naming what an upgrade of ``package`` took away, unless ``present``."""
    if present:
        return
    supported = SUPPORTED[package]
    raise CompatibilityError(f"{package} {installed_version(package) or '(not installed)'} has no {needed}, which "
                             f"finfed uses {purpose}; finfed was written against {package} {supported.described}: "
                             "install that, or update finfed/compat.py")


# --------------------------------------------------------------------------- PyTorch

# PyTorch's CPU generator is MT19937. Its public `manual_seed` keeps only the low 32 bits of the
# seed (at::mt19937 seeds with `init_with_uint32`), so a generator seeded from 64 secret bits still
# has only 2**32 possible streams: few enough to try them all. Its full state, 624 32-bit words
# (19968 bits), can be set only through `Generator.set_state`, whose byte layout is PyTorch's
# `CPUGeneratorImplState` (aten/src/ATen/CPUGeneratorImpl.cpp): a legacy header (uint64 initial
# seed, int32 left, int32 seeded, uint64 next), then the 624 words each stored as a uint64, then
# cached normal samples. Checked below against the size of that layout and by a round trip.
_MT_WORDS = 624
_MT_STATE_OFFSET = 24
_CPU_STATE_BYTES = 5056


def generator_from_words(words: np.ndarray) -> torch.Generator:
    """A CPU generator whose whole MT19937 state is ``words`` (624 values below 2**32).

    The header of a freshly seeded generator is kept (``left`` = 1, no cached normal
    sample), so the first draw twists the new state: the stream depends on all 624 words.
    """
    import numpy as np
    import torch

    words = np.asarray(words, dtype="<u8")
    if words.shape != (_MT_WORDS,) or int(words.max()) >= 2**32 or not words.any():
        raise ValueError(f"an MT19937 state is {_MT_WORDS} words below 2**32, not all zero")
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state().clone()
    require(state.numel() == _CPU_STATE_BYTES, "torch", f"a {_CPU_STATE_BYTES}-byte CPU generator state (this one "
            f"has {state.numel()} bytes)", "to seed DP noise from 19968 secret bits")
    body = torch.frombuffer(bytearray(words.tobytes()), dtype=torch.uint8)
    state[_MT_STATE_OFFSET:_MT_STATE_OFFSET + body.numel()] = body
    generator.set_state(state)
    require(torch.equal(generator.get_state(), state), "torch", "CPU generator that keeps the MT19937 state "
            "set through `Generator.set_state`", "to seed DP noise from 19968 secret bits")
    return generator


# --------------------------------------------------------------------------- Opacus

# DPOptimizer raises ValueError with these words when a trainable tensor has no per-sample
# gradient (opacus/optimizers/optimizer.py, `_get_flat_grad_sample`); there is no dedicated type.
_NO_PER_SAMPLE_GRADIENT = "Per sample gradient"


def is_missing_per_sample_gradient(error: BaseException) -> bool:
    """Whether ``error`` is Opacus saying a trainable tensor received no per-sample gradient."""
    return isinstance(error, ValueError) and _NO_PER_SAMPLE_GRADIENT in str(error)


def empty_per_sample_gradients(optimizer) -> None:
    """Give every parameter of a ``DPOptimizer`` a per-sample gradient for a batch of zero examples.

    Opacus clips and sums ``param.grad_sample`` over its first (batch) dimension; with none
    the clipped sum is zero and ``step()`` adds only the Gaussian noise: an empty Poisson
    batch's step, with no fabricated sample.
    """
    import torch

    for param in optimizer.params:
        param.grad_sample = torch.zeros((0, *param.shape), dtype=param.dtype, device=param.device)


def add_noise_on_cpu(optimizer) -> None:
    """``DPOptimizer.add_noise`` with the noise drawn on the CPU, in fp32, and moved to each parameter's device.

    finfed's DP generators are CPU generators (secret MT19937 state, finfed.privacy.randomness);
    Opacus draws noise on the parameter's device with the given generator, which PyTorch refuses
    for a CPU generator and a CUDA tensor. Drawing on the CPU keeps the same secret generator on
    every device, and the very same noise on the CPU as Opacus' own add_noise
    (opacus/optimizers/optimizer.py; its helpers are private).
    """
    from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed

    for param in optimizer.params:
        _check_processed_flag(param.summed_grad)
        reference = param.summed_grad.detach().to("cpu", dtype=param.summed_grad.dtype)
        noise = _generate_noise(std=optimizer.noise_multiplier * optimizer.max_grad_norm, reference=reference,
                                generator=optimizer.generator, secure_mode=optimizer.secure_mode)
        param.grad = (param.summed_grad + noise.to(param.summed_grad.device)).view_as(param)
        _mark_as_processed(param.summed_grad)


# --------------------------------------------------------------------------- Flower: printed output

# `flwr run` prints this line, ending with the run id, once the SuperLink accepted the run
# (flwr/cli/run/run.py); it prints the id nowhere else.
_RUN_STARTED = "Successfully started run"
# A run's status in `flwr ls --format json` when it ended without error.
FLOWER_RUN_COMPLETED = "finished:completed"


def started_run_id(line: str) -> str | None:
    """The run id in a line `flwr run` printed, if it is the line announcing the run."""
    return line.split()[-1] if _RUN_STARTED in line else None


def log_shows_started_run(text: str) -> bool:
    """Whether a log of `flwr run`'s output shows the run was started."""
    return _RUN_STARTED in text


def listed_run_status(listing: str) -> tuple[str, str] | None:
    """(status, details) of the one run in `flwr ls --run-id ID --format json`'s output; None if it holds none."""
    try:
        run = json.loads(listing)["runs"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return run.get("status", "unknown"), run.get("status-details", "")


def registered_node_id(output: str) -> int | None:
    """The node id in `flwr supernode register --format json`'s answer (a JSON object, maybe indented,
    maybe after other lines), if it has one."""
    decoder = json.JSONDecoder()
    start = output.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(output, start)
        except ValueError:
            start = output.find("{", start + 1)
            continue
        node = value.get("node-id") if isinstance(value, dict) else None
        return int(node) if node is not None else None
    return None


def registration_succeeded(output: str) -> bool:
    """Whether `flwr supernode register --format json` says it registered the key."""
    return '"success": true' in output


def key_already_registered(output: str) -> bool:
    """Whether `flwr supernode register` refused a key because the SuperLink knows it already."""
    return "already in use" in output


def listed_nodes(output: str) -> list[dict[str, Any]]:
    """The nodes in `flwr supernode ls --format json`'s output (ValueError or KeyError if it holds none)."""
    return json.loads(output)["nodes"]


def log_error_lines(lines: list[str]) -> list[str]:
    """The lines of a Flower log that report an error."""
    return [line.strip() for line in lines if "ERROR" in line or "Error" in line]


def port_taken(line: str) -> bool:
    """Whether a Flower (gRPC) error line says the port was taken."""
    return "address already in use" in line.lower()


# What a SuperNode's output holds when it is turned away, by cause.
SUPERNODE_NOT_REGISTERED = "Failed to activate SuperNode"
TLS_CERTIFICATE_UNTRUSTED = "CERTIFICATE_VERIFY_FAILED"
PRIVATE_KEY_UNREADABLE = "Unable to parse the private key file"
PLAIN_CONNECTION_TO_TLS = "Server disconnected without sending a response"


# --------------------------------------------------------------------------- Flower: internals

def client_app_error_code() -> int:
    """The error code Flower itself gives an error reply of a ClientApp that raised."""
    from flwr.common.constant import ErrorCode

    return ErrorCode.CLIENT_APP_RAISED_EXCEPTION


def parse_flower_address(address: str) -> tuple[str, int, bool | None] | None:
    """(host, port, is IPv6) of a `host:port` address, the way Flower's own tools parse it; None if not one."""
    from flwr.supercore.address import parse_address

    return parse_address(address)


class SecAggNames(NamedTuple):
    record: str  # the config record of every SecAgg+ protocol message
    stage: str  # its key naming the protocol stage
    setup: str  # the first stage's name
    masked_parameters: str  # the key of a site's masked vector


@cache
def secagg_names() -> SecAggNames:
    """The record and keys of Flower's SecAgg+ protocol messages (``secaggplus_constants``, undocumented)."""
    from flwr.common.secure_aggregation.secaggplus_constants import (
        RECORD_KEY_CONFIGS,
        Key,
        Stage,
    )

    return SecAggNames(RECORD_KEY_CONFIGS, Key.STAGE, Stage.SETUP, Key.MASKED_PARAMETERS)


def secagg_stage(content) -> str | None:
    """The SecAgg+ protocol stage a message's ``RecordDict`` asks for (None: not a SecAgg+ message)."""
    names = secagg_names()
    if names.record not in content.config_records:
        return None
    return str(content.config_records[names.record].get(names.stage, ""))


def grid_client_proxy(node_id: int, grid, run_id: int):
    """The legacy ``ClientProxy`` of one node, which a legacy strategy's ``configure_fit`` must return.

    Flower exports no public constructor for it; its SecAgg+ workflow reads only ``node_id``.
    """
    from flwr.server.compat.grid_client_proxy import GridClientProxy

    return GridClientProxy(node_id=node_id, grid=grid, run_id=run_id)


def legacy_round_context(context, strategy, num_rounds: int, server_round: int, parameters):
    """A ``LegacyContext`` holding what ``SecAggPlusWorkflow`` reads for one round.

    Flower's ``DefaultWorkflow`` normally fills it: the global parameters (an ``ArrayRecord``)
    and the current round, under record names and keys from an undocumented module.
    """
    from flwr.app import ConfigRecord
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow.constant import (
        MAIN_CONFIGS_RECORD,
        MAIN_PARAMS_RECORD,
        Key,
    )

    legacy = LegacyContext(context, config=ServerConfig(num_rounds=num_rounds), strategy=strategy)
    legacy.state.array_records[MAIN_PARAMS_RECORD] = parameters
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {Key.CURRENT_ROUND: server_round, Key.START_TIME: time.time()})
    return legacy


# The fields of SecAggPlusWorkflow's per-round state that finfed reads or narrows.
_SECAGG_STATE_FIELDS = {"failures", "active_node_ids", "sampled_node_ids", "nid_to_neighbours"}


@cache
def check_secagg_workflow() -> None:
    """The ``SecAggPlusWorkflow`` internals finfed's dropout fix needs are all there."""
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import (
        WorkflowState,
    )

    purpose = "to leave sites that failed SecAgg+'s first stages out of the unmasking"
    require(callable(getattr(SecAggPlusWorkflow, "_check_threshold", None)), "flwr",
            "SecAggPlusWorkflow._check_threshold", purpose)
    for stage in ("setup_stage", "share_keys_stage"):
        require(callable(getattr(SecAggPlusWorkflow, stage, None)), "flwr", f"SecAggPlusWorkflow.{stage}", purpose)
    fields = {field.name for field in dataclasses.fields(WorkflowState)}
    require(fields >= _SECAGG_STATE_FIELDS, "flwr", f"WorkflowState fields {sorted(_SECAGG_STATE_FIELDS - fields)}",
            purpose)


def secagg_failure_error(failure: BaseException):
    """The site's ``Error`` reply inside a SecAgg+ failure (the workflow wraps it as ``Exception(error)``), or None."""
    from flwr.app import Error

    error = failure.args[0] if failure.args else None
    return error if isinstance(error, Error) else None


def secagg_drop_error_replies(state, code: int) -> None:
    """Remove from the workflow's failures the sites' error replies with ``code`` (they are not failures)."""
    state.failures = [f for f in state.failures if getattr(secagg_failure_error(f), "code", None) != code]


def secagg_keep_participants(workflow, state) -> bool:
    """Narrow the round to the sites whose key shares arrived; whether enough neighbours remain.

    After the share-keys stage only ``active_node_ids`` hold masks with each other; unmasking
    for any other sampled site would ask for key shares that were never sent.
    """
    participants = set(state.active_node_ids)
    state.sampled_node_ids = participants
    state.nid_to_neighbours = {node: neighbours & participants
                               for node, neighbours in state.nid_to_neighbours.items() if node in participants}
    return workflow._check_threshold(state)


warn_unsupported_versions()


# --------------------------------------------------------------------------- Flower's run-config flattening
# flwr.common.config is not part of Flower's documented API, but its flattening rule is the one `flwr run`
# applies to the app's `[tool.flwr.app.config]`; using it keeps finfed's keys identical to Flower's.

def flatten_run_config(nested: dict[str, Any]) -> dict[str, Any]:
    """Nested sections -> Flower's dotted ``run_config`` keys."""
    from flwr.common.config import flatten_dict

    return flatten_dict(nested)


def unflatten_run_config(flat: dict[str, Any]) -> dict[str, Any]:
    """Flower's dotted ``run_config`` keys -> nested sections (TypeError if a key is both value and section)."""
    from flwr.common.config import unflatten_dict

    return unflatten_dict(flat)


# --------------------------------------------------------------------------- the engine's printed lines
# Ray prefixes an actor's output with "(ClientAppActor pid=N)" and colours it; Flower marks failures
# with ERROR or an exception's name. Neither is an API: both are read here only.
_ACTOR_PREFIX = re.compile(r"^\S*\(ClientAppActor pid=\d+\)\S*\s*")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def engine_line_text(line: str) -> str:
    """A line of `flwr run --stream` without Ray's colours and actor prefix."""
    return _ACTOR_PREFIX.sub("", _ANSI.sub("", line))


def engine_line_is_error(text: str) -> bool:
    """Whether a (cleaned) engine line reports a failure, so it is shown even without --verbose."""
    return "ERROR" in text or "Exception" in text

