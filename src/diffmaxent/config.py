"""Hyperparameters as frozen dataclasses, named presets, and `name=value` overrides.

Every agent config and the shared training-loop config are frozen dataclasses whose fields are
declared with :func:`hp`, which records a help text and the accepted range. The same parsing and
validation serve the CLI (``--set name=value``) and the Python API (``overrides={...}``), so both
reject the same input with the same one-line message.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from diffmaxent.errors import UsageError

AUTO = "auto"


def hp(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    """Declare a hyperparameter field with its help text and accepted range.

    Args:
        default: default value (must be immutable: tuples, not lists).
        help: one sentence shown by ``diffmaxent presets``.
        low, high: inclusive bounds for numbers (for tuples, every element); ``low_open`` makes the
            lower bound exclusive.
    """
    return dataclasses.field(
        default=default, metadata={"help": help, "low": low, "high": high, "low_open": low_open}
    )


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return f"tuple[{_type_name(typing.get_args(annotation)[0])}, ...]"
    return getattr(annotation, "__name__", str(annotation))


def _parse_scalar(text: str, annotation: Any) -> Any:
    """Parse `text` as `annotation`; raise ValueError when it does not fit."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        for choice in typing.get_args(annotation):
            if text == str(choice):
                return choice
        raise ValueError
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _parse_scalar(text, option)
            except ValueError:
                continue
        raise ValueError
    if origin is tuple:
        (element,) = typing.get_args(annotation)[:1]
        parts = text.replace("(", "").replace(")", "").split(",")
        if not all(p.strip() for p in parts):  # "64,,64" or "64," is a typo, not (64, 64)
            raise ValueError
        return tuple(_parse_scalar(p.strip(), element) for p in parts)
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError
    if annotation is int:
        value = float(text)
        if not value.is_integer():
            raise ValueError
        return int(value)
    if annotation is float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
        return value
    if annotation is str:
        return text
    raise TypeError(f"unsupported hyperparameter type {annotation!r}")


def _coerce(value: Any, annotation: Any) -> Any:
    """Accept a Python value for a field (ints for floats, lists for tuples), else ValueError."""
    if isinstance(value, str):
        return _parse_scalar(value, annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if value in typing.get_args(annotation):
            return value
        raise ValueError
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(value, option)
            except ValueError:
                continue
        raise ValueError
    if origin is tuple:
        (element,) = typing.get_args(annotation)[:1]
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError
        return tuple(_coerce(v, element) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        if float(value).is_integer():
            return int(value)
        raise ValueError
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        if not math.isfinite(value):
            raise ValueError
        return float(value)
    raise ValueError


def _check_range(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    low, high, low_open = meta.get("low"), meta.get("high"), meta.get("low_open", False)
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        too_low = low is not None and (v <= low if low_open else v < low)
        too_high = high is not None and v > high
        if too_low or too_high:
            lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
            hi = "" if high is None else f"<= {high}"
            bound = " and ".join(b for b in (lo, hi) if b)
            raise UsageError(f"hyperparameter {name}={value!r} is out of range: must be {bound}")


def field_types(config_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def describe_fields(config_cls: type) -> list[tuple[str, str, Any, str]]:
    """Rows ``(name, type, default, help)`` for every field of a config dataclass."""
    types_ = field_types(config_cls)
    return [
        (f.name, _type_name(types_[f.name]), f.default, f.metadata.get("help", ""))
        for f in dataclasses.fields(config_cls)
    ]


def replace_validated(config: Any, values: Mapping[str, Any]) -> Any:
    """Return ``config`` with ``values`` applied, parsed (strings) or coerced, and range-checked.

    Raises:
        UsageError: for an unknown name, a value of the wrong type or out of range.
    """
    types_ = field_types(type(config))
    metas = {f.name: f.metadata for f in dataclasses.fields(config)}
    parsed = {}
    for name, raw in values.items():
        if name not in types_:
            raise UsageError(
                f"unknown hyperparameter {name!r}; accepted: {', '.join(sorted(types_))}"
            )
        try:
            value = _coerce(raw, types_[name])
        except ValueError:
            raise UsageError(
                f"hyperparameter {name}={raw!r} is not a valid {_type_name(types_[name])}"
            ) from None
        _check_range(name, value, metas[name])
        parsed[name] = value
    return dataclasses.replace(config, **parsed)


def parse_assignments(assignments: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Turn ``["gamma=0.98", "hidden_dims=64,64"]`` into a dict; reject malformed items."""
    result: dict[str, str] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"--set expects name=value, got {item!r}")
        result[name.strip()] = value.strip()
    return result


def task_of(env_id: str) -> str:
    """The task an env id names, without its Gymnasium namespace and version: ``HalfCheetah-v5``
    and ``paper/HalfCheetah-v3`` -> ``HalfCheetah``, ``MultiGoal-v0`` -> ``MultiGoal``,
    ``dmc:cheetah-run`` -> ``dmc:cheetah-run``."""
    return re.sub(r"-v\d+$", "", env_id.rpartition("/")[2])


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named set of hyperparameter values, as data.

    Attributes:
        values: what the preset sets on every env.
        note: where the values come from (one or two sentences).
        suite: the benchmark suite (``gym``, ``dmc``, ``myo``) the values were published or
            tuned for; None when they suit any env.
        per_task: values set on top of ``values`` for one task (keys as :func:`task_of` gives).
    """

    values: Mapping[str, Any]
    note: str
    suite: str | None = None
    per_task: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def values_for(self, env_id: str) -> dict[str, Any]:
        """Everything the preset sets when training on ``env_id``."""
        return {**self.values, **self.per_task.get(task_of(env_id), {})}


def preset_values(presets: Mapping[str, Preset], name: str, env_id: str) -> dict[str, Any]:
    """The values the preset ``name`` sets on ``env_id``."""
    if name not in presets:
        raise UsageError(f"unknown preset {name!r}; accepted: {', '.join(presets)}")
    return presets[name].values_for(env_id)


def to_json_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def from_json_dict(config_cls: type, values: Mapping[str, Any]) -> Any:
    """Rebuild a config written by :func:`to_json_dict`, validating every value."""
    return replace_validated(config_cls(), values)


def with_defaults(group: type, **defaults: Any) -> type:
    """``group`` (a frozen config dataclass) with other defaults for some of its fields, help text
    and range kept: for an agent whose published defaults differ from the group's.

    Raises:
        TypeError: for a name that is not a field of ``group``.
    """
    fields = {f.name: f for f in dataclasses.fields(group)}
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise TypeError(f"{group.__name__} has no field {unknown[0]!r}")
    namespace: dict[str, Any] = {
        "__annotations__": {name: fields[name].type for name in defaults},
        "__module__": group.__module__,
        "__qualname__": group.__qualname__,
        "__doc__": group.__doc__,
    }
    for name, value in defaults.items():
        namespace[name] = dataclasses.field(default=value, metadata=fields[name].metadata)
    variant = type(group.__name__, (group,), namespace)
    return dataclasses.dataclass(frozen=True, kw_only=True)(variant)
