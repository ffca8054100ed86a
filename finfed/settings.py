"""Typed settings with help text: the one way finfed reads and checks a settings file.

A section is a frozen dataclass whose fields are made with :func:`setting` (default or
required, help text, bounds, a hint on how to fix a missing value); a ``Literal`` type lists the
choices. :func:`read_section` checks nested plain values (from YAML, TOML, ``--set`` or Flower's
run config) against such a class and records every problem in :class:`Problems`, which raises one
error naming the file, each key, what was expected and what it got. The experiment file
(:mod:`finfed.config`), a bank's ``site.toml`` and ``consortium.toml`` (:mod:`finfed.deploy`) all
use it, and ``docs/configuration.md`` is rendered from the same fields (:mod:`finfed.config_docs`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, Mapping

from finfed.errors import ConfigError

REQUIRED: Any = MISSING


def setting(default: Any = REQUIRED, help: str = "", minimum: float | None = None, maximum: float | None = None,
            exclusive_min: bool = False, *, exclusive_max: bool = False, hint: str = "") -> Any:
    """A settings field: its default (``REQUIRED``: none), help text, allowed range and a fix for a missing value."""
    meta = {"help": help, "min": minimum, "max": maximum, "exclusive_min": exclusive_min,
            "exclusive_max": exclusive_max, "hint": hint}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Problem:
    path: tuple[str, ...]  # section(s) then key; empty = the whole file
    message: str


class Problems:
    """Every problem found in one settings file, so that it is fixed in one pass.

    ``toml`` names keys as the file shows them (``[privacy] budget_epsilon``); otherwise as
    ``--set`` takes them (```privacy.target_epsilon```).
    """

    def __init__(self, source: object = "", *, toml: bool = False) -> None:
        self.source, self.toml, self.items = str(source or ""), toml, []

    def add(self, path: tuple[str, ...] | str, message: str) -> None:
        self.items.append(Problem(tuple(path.split(".")) if isinstance(path, str) else tuple(path), message))

    def label(self, path: tuple[str, ...]) -> str:
        if not path:
            return ""
        if self.toml:
            return f"[{'.'.join(path[:-1])}] {path[-1]}:" if len(path) > 1 else f"[{path[0]}]:"
        return f"`{'.'.join(path)}`"

    def render(self, problem: Problem) -> str:
        return f"{self.label(problem.path)} {problem.message}".strip()

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = [self.render(problem) for problem in self.items]
        if len(lines) == 1:
            raise ConfigError(f"{self.source}: {lines[0]}" if self.source else lines[0])
        where = f"{self.source} has" if self.source else "the settings have"
        raise ConfigError(f"{where} {len(lines)} problem(s):\n  - " + "\n  - ".join(lines))


class NameMap(dict):
    """A frozen, hashable map of names to names (e.g. ``data.label_map``): settings stay hashable and comparable.

    From YAML or ``--set`` it comes as a mapping (``{neg: negative, pos: positive}``); through Flower's flat run
    config as JSON text (:func:`to_text`), which :func:`check_value` reads back.
    """

    def __init__(self, pairs: Any = ()) -> None:
        super().__init__(pairs)

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _frozen(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("settings are frozen: a NameMap cannot be changed")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _frozen  # type: ignore[assignment]
    __ior__ = _frozen  # type: ignore[assignment]

    def __reduce__(self) -> tuple:  # copy and pickle rebuild it whole, never item by item
        return NameMap, (dict(self),)

    def to_text(self) -> str:
        """JSON text, for Flower's run config (scalars only)."""
        import json

        return json.dumps(dict(self), ensure_ascii=False, sort_keys=True)


class Invalid(ValueError):
    """A value that does not fit its setting; the message says what was expected and what it got."""


def read_section(cls: type, values: Any, problems: Problems, path: tuple[str, ...] = (),
                 refused: Mapping[str, str] | None = None) -> Any:
    """``cls`` built from ``values`` (nested sections too), or None with every problem recorded.

    ``refused`` maps key names to why finfed has no such setting, added to their "unknown key" problem.
    """
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        problems.add(path, f"must be a mapping of keys (a section), got {values!r}")
        return None
    check_known(cls, values, problems, path, refused)
    kwargs, before = {}, len(problems.items)
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        name, annotation, key = spec.name, hints[spec.name], (*path, spec.name)
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = read_section(annotation, values.get(name), problems, key, refused)
        elif name not in values:
            if spec.default is MISSING and spec.default_factory is MISSING:
                problems.add(key, "is missing" + _fix(spec.metadata))
        else:
            kwargs[name] = _checked(values[name], annotation, spec, key, problems)
    return cls(**kwargs) if len(problems.items) == before else None


def read_sections(cls: type, values: Mapping[str, Any], problems: Problems,
                  refused: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Each section of ``cls`` read on its own: ``{name: section, or None if it has a problem}``.

    For files whose sections are checked further one by one (a site's files, once their keys are valid)."""
    check_known(cls, values, problems, (), refused)
    hints = typing.get_type_hints(cls)
    return {spec.name: read_section(hints[spec.name], values.get(spec.name), problems, (spec.name,), refused)
            for spec in dataclasses.fields(cls)}


def check_known(cls: type, values: Mapping[str, Any], problems: Problems, path: tuple[str, ...],
                refused: Mapping[str, str] | None = None) -> None:
    """A misspelt key is an error, not a silently ignored setting."""
    known = [spec.name for spec in dataclasses.fields(cls)]
    for name in sorted(set(values) - set(known), key=str):
        why = (refused or {}).get(name, "")
        kind = "section" if isinstance(values[name], Mapping) else "key"
        problems.add((*path, str(name)), f"is an unknown {kind}{f' ({why})' if why else ''}; "
                                         f"known {kind}s here: {', '.join(known)}")


def _checked(value: Any, annotation: Any, spec: dataclasses.Field, key: tuple[str, ...], problems: Problems) -> Any:
    try:
        value = check_value(value, annotation, spec.metadata)
    except Invalid as exc:
        problems.add(key, str(exc))
        return None
    if spec.default is MISSING and value == "":  # required text: blank is as good as missing
        problems.add(key, "is empty" + _fix(spec.metadata))
    return value


def _fix(meta: Mapping[str, Any]) -> str:
    fix = meta.get("hint") or meta.get("help")
    return f": set {fix}" if fix else ""


_PLAIN = {bool: "true or false", str: "text (in quotes)"}


def check_value(value: Any, annotation: Any, meta: Mapping[str, Any]) -> Any:
    """``value`` as ``annotation`` wants it, or :class:`Invalid` saying what was expected and what came."""
    if typing.get_origin(annotation) is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise Invalid(f"must be one of {list(allowed)}, got {value!r}")
        return value
    if annotation in _PLAIN:
        if not isinstance(value, annotation):
            raise Invalid(f"must be {_PLAIN[annotation]}, got {value!r}")
        return value
    if annotation is tuple:
        if isinstance(value, str):  # run_config and --set carry lists as comma-joined text
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int)) for v in value):
            raise Invalid(f"must be a list of names, got {value!r}")
        return tuple(str(v) for v in value)
    if annotation is NameMap:
        return _name_map(value)
    if annotation in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"must be a number ({annotation.__name__}), got {value!r}")
        if annotation is int and float(value) != int(value):
            raise Invalid(f"must be a whole number, got {value!r}")
        value = annotation(value)
        if not within(value, meta):
            raise Invalid(f"must be {bounds(meta)}, got {value!r}")
        return value
    raise TypeError(f"unsupported settings type {annotation}")


def _name_map(value: Any) -> NameMap:
    """A mapping of names, from a mapping or (run config, ``--set``) its JSON / YAML flow text."""
    if isinstance(value, str):
        import yaml  # JSON text from the run config is YAML too

        text = value.strip()
        try:
            value = yaml.safe_load(text) if text else {}
        except yaml.YAMLError:
            raise Invalid(f"must be a map of names such as {{neg: negative, pos: positive}}, got {text!r}") from None
        value = {} if value is None else value
    if not isinstance(value, Mapping) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for pair in value.items() for v in pair):
        raise Invalid(f"must be a map of names such as {{neg: negative, pos: positive}}, got {value!r}")
    return NameMap((_name(k), _name(v)) for k, v in value.items())


def _name(value: Any) -> str:
    """A file's value as text: 1.0 read from YAML still names the file's `1.0`, 1 its `1`."""
    return str(value)


def within(value: float, meta: Mapping[str, Any]) -> bool:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("exclusive_min") and value == low)):
        return False
    return high is None or (value < high or (value == high and not meta.get("exclusive_max")))


def bounds(meta: Mapping[str, Any]) -> str:
    """The allowed range in words, e.g. ``> 0.0 and <= 0.9``; empty when any value goes."""
    parts = []
    if meta.get("min") is not None:
        parts.append(f"{'>' if meta.get('exclusive_min') else '>='} {meta['min']}")
    if meta.get("max") is not None:
        parts.append(f"{'<' if meta.get('exclusive_max') else '<='} {meta['max']}")
    return " and ".join(parts)


def type_name(annotation: Any) -> str:
    """How a settings type reads in the documentation."""
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{choice}`" for choice in typing.get_args(annotation))
    names = {bool: "true/false", int: "whole number", float: "number", str: "text", tuple: "list of names",
             NameMap: "map of names"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))
