"""Filling a :class:`~ase_eqgnn.train.config.TrainConfig` from YAML files and command-line flags.

YAML and flags give strings (and ints where floats are meant): each value is converted to its
field's type, and a value that cannot be is an error naming the key. Flags win over the file, and
the file over the defaults.

>>> from ase_eqgnn.train.config_sources import config_from_dict
>>> config_from_dict({"data": "train.npz", "lr": "1e-3", "max-epochs": "20"}).lr
0.001
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import types
import typing
from typing import Any, Dict, Mapping, Optional, Union

import yaml

from .config import TrainConfig

__all__ = ["config_from_dict", "load_config", "save_config", "add_config_arguments", "config_from_args"]


# ---------------------------------------------------------------------------------------------------
# type coercion (YAML and flags give strings, ints for floats, ...)


def _field_types() -> Dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


_NONE_STRINGS = {"none", "null", "~", ""}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` to the field type ``tp``; ValueError naming the key otherwise."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE_STRINGS):
        if optional:
            return None
        raise ValueError(f"config key {name!r} must not be null")
    origin = typing.get_origin(base) or base
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise TypeError
        if base is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                f = float(value)
                if not f.is_integer():
                    raise TypeError
                return int(f)
            if isinstance(value, int):
                return value
            raise TypeError
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise TypeError
            return str(value)
        if origin in (dict, list):
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if origin is dict and isinstance(value, Mapping):
                return dict(value)
            if origin is list and isinstance(value, (list, tuple)):
                return list(value)
            if origin is list and isinstance(value, (str, int)):
                return [value]
            raise TypeError
    except (TypeError, ValueError, yaml.YAMLError):
        pass
    else:
        return value
    kind = getattr(base, "__name__", str(base))
    raise ValueError(f"config key {name!r} must be {'null or ' if optional else ''}{kind}; got {value!r}")


# ---------------------------------------------------------------------------------------------------
# dict / YAML


def config_from_dict(values: Mapping[str, Any], source: str = "config",
                     base: Optional[TrainConfig] = None) -> TrainConfig:
    """A config from ``values`` on top of ``base`` (default: the defaults).

    Keys may use ``-`` or ``_``. Unknown keys raise ``ValueError`` naming them and listing the
    valid keys; values are converted to the field's type (``"1e-3"`` -> 0.001).
    """
    types_ = _field_types()
    clean: Dict[str, Any] = {}
    unknown = []
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k not in types_:
            unknown.append(str(key))
            continue
        clean[k] = _coerce(k, value, types_[k])
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(repr(u) for u in unknown)} in {source}; "
                         f"valid keys: {', '.join(types_)}")
    merged = (base or TrainConfig()).to_dict()
    merged.update(clean)
    return TrainConfig(**merged)


def load_config(path: Union[str, pathlib.Path], base: Optional[TrainConfig] = None) -> TrainConfig:
    """Read a YAML config file (a mapping of config keys); see :func:`config_from_dict`."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    if not path.is_file():
        raise ValueError(f"config {path} is not a file (give a YAML file)")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (a config is YAML text)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where} ({problem})") from None
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{path}: a config must be a mapping of keys to values, got {type(values).__name__}")
    return config_from_dict(values, source=str(path), base=base)


def save_config(config: TrainConfig, path: Union[str, pathlib.Path]) -> None:
    """Write the resolved config as YAML (every key, in declaration order), atomically, as a run's
    ``config.yaml`` is written."""
    from .run_dir import atomic_output, dump_config

    with atomic_output(str(path)) as f:
        f.write(dump_config(config.to_dict()))


# ---------------------------------------------------------------------------------------------------
# argparse


#: Extra flag names: ``--threads`` as every eqgnn-* command spells it.
_FLAG_ALIASES = {"num_threads": ("--threads",)}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--key`` flag per config field (``_`` -> ``-``); unset flags stay absent.

    Booleans get ``--key/--no-key``; dict and list fields take YAML (``--hparams "{features: 64}"``,
    ``--species "[H, C, O]"``); optional fields accept ``none``.
    """
    group = parser.add_argument_group("training config (each overrides the YAML file)")
    for f in dataclasses.fields(TrainConfig):
        tp = _field_types()[f.name]
        base, optional = _unwrap_optional(tp)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        # argparse %-formats help texts: a literal % must be doubled.
        help_ = f"{f.metadata.get('help', '')} (default: {default!r})".strip().replace("%", "%%")
        flags = [flag, *_FLAG_ALIASES.get(f.name, ())]
        if base is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_)
        else:
            metavar = {int: "N", float: "X", str: "S"}.get(base, "YAML")
            group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, metavar=metavar, help=help_)


def config_from_args(args: argparse.Namespace, config_path: Optional[str] = None,
                     defaults: Optional[TrainConfig] = None) -> TrainConfig:
    """``defaults`` (TrainConfig's own if None) <- YAML file (if any) <- flags present in ``args``."""
    base = load_config(config_path, base=defaults) if config_path else (defaults or TrainConfig())
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return config_from_dict(given, source="command-line flags", base=base)
