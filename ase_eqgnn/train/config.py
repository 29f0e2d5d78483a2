"""`TrainConfig`: the one typed object that describes a training run.

YAML files and command-line flags fill it; flags win over the file, and the file over the defaults.
Unknown keys are an error naming the key and listing the valid ones. Paths in a config are taken
relative to the current working directory (where ``eqgnn-train`` is started), not to the YAML file.

Units: energies eV, lengths Å, times s (``max_time``), learning rates per optimizer step.

>>> cfg = TrainConfig(data="train.npz", out="run1")
>>> cfg.model, cfg.batch_size
('painn', 8)
>>> cfg = config_from_dict({"data": "train.npz", "max_epochs": "20"})
>>> cfg.max_epochs
20
>>> TrainConfig(data="train.npz", max_time=600).epoch_limit  # a budget: only it ends the run
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

from ..checkpoint.potential import CUTOFF_RANGE_A, check_hparams
from ..dtypes import DTYPES as _DTYPE_TABLE

__all__ = ["TrainConfig", "config_from_dict", "load_config", "save_config", "add_config_arguments",
           "config_from_args", "RESUME_MUTABLE_KEYS"]

SCHEDULERS = ("auto", "plateau", "cosine")
#: What the None defaults of ``max_epochs`` and ``patience`` mean for a run without ``max_time``.
DEFAULT_MAX_EPOCHS = 100
DEFAULT_PATIENCE = 30
LOSSES = ("mse", "huber")
DTYPES = tuple(_DTYPE_TABLE)  # ase_eqgnn.dtypes
SPLITS = ("random", "contiguous")
LAYOUTS = ("auto", "reference")  # ase_eqgnn.models.neighborhood.LAYOUTS
#: Upper bounds that keep a typo from exhausting the machine (a 1e6 Å cutoff builds neighbour lists
#: of every atom with every other many times over; 10**6 threads or workers are never meant).
#: The cutoffs (Å) a model file may have (the checkpoint module refuses others on loading).
CUTOFF_RANGE = CUTOFF_RANGE_A
MAX_THREADS = 1024
MAX_WORKERS = 64


def _f(default: Any, help: str) -> Any:
    """A dataclass field with a help text (shown by ``eqgnn-train --help``)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of a training run (each field's ``metadata["help"]`` gives units and meaning)."""

    # ------------------------------------------------------------------ data
    data: Optional[str] = _f(None, "training data file (any format ase_eqgnn.data.read_dataset reads)")
    valid_data: Optional[str] = _f(None, "explicit validation file; else a split of ``data``")
    valid_fraction: float = _f(0.05, "fraction of ``data`` held out for validation (when no valid_data)")
    split: str = _f("random", "\"random\" (seeded) or \"contiguous\" (last block of frames)")
    test_data: Optional[str] = _f(None, "evaluated with the best model at the end (optional)")
    format: Optional[str] = _f(None, "reader format (\"npz\", \"mdtraj\", an ase.io name); None = by extension")
    energy_unit: Optional[str] = _f(None, "energy unit in the files (e.g. \"kcal/mol\"); None = native")
    length_unit: Optional[str] = _f(None, "length unit in the files (e.g. \"nm\"); None = Å")
    energies: Optional[str] = _f(None, "energies/forces .npz for an mdtraj ``data`` trajectory")
    valid_energies: Optional[str] = _f(None, "same for ``valid_data``")
    test_energies: Optional[str] = _f(None, "same for ``test_data``")
    topology: Optional[str] = _f(None, "topology for mdtraj formats without one (DCD, XTC, ...)")
    index: str = _f(":", "frames of ``data`` to use, ASE style (\":\", \"::10\", \":1000\")")
    cg_map: Optional[str] = _f(None, "train a coarse-grained potential by force matching: a map name "
                                     "(ala2-5bead, residue, residue-com, ca), a CG map .json, or "
                                     "\"data\" for CG data sets (ase_eqgnn.cg.training)")
    temperature: float = _f(300.0, "temperature of the data, K (cg_map only: fits the CG priors)")

    # ------------------------------------------------------------------ model
    model: str = _f("painn", "\"painn\", \"tp\" or \"egnn\"")
    hparams: Dict[str, Any] = field(default_factory=dict,
                                   metadata={"help": "family hyper-parameters (see build_model)"})
    cutoff: float = _f(5.0, "neighbour cutoff, Å")
    species: Optional[List[Any]] = _f(None, "elements the model knows; None = those in the training data")
    e0: Optional[Dict[str, float]] = _f(None, "reference energies per element (eV); None = least squares")
    scale: Optional[float] = _f(None, "energy scale (eV); None = RMS of training forces")

    # ------------------------------------------------------------------ run
    out: str = _f("run", "run directory (config.yaml, last.pt, best.pt, log.csv, PNGs)")
    max_epochs: Optional[int] = _f(None, "maximum number of passes over the training set; None = "
                                         f"{DEFAULT_MAX_EPOCHS}, or no limit when max_time is set "
                                         "(a given value still caps a budgeted run)")
    max_time: Optional[float] = _f(None, "wall-time budget in seconds (summed over resumes); None = "
                                         "none. With a budget the defaults use it all: the lr "
                                         "anneals over it (scheduler auto) and neither max_epochs "
                                         "nor patience ends the run unless given")
    batch_size: int = _f(8, "structures per optimizer step (global, over all processes)")
    valid_batch_size: Optional[int] = _f(None, "structures per validation batch; None = 2 * batch_size")
    seed: int = _f(0, "seed of the split, the initial weights and the batch order")
    device: str = _f("auto", "\"auto\" (cuda when available), \"cpu\", \"cuda\", \"cuda:1\"")
    dtype: str = _f("float32", "training precision")
    valid_dtype: Optional[str] = _f(None, "precision of validation/test evaluation; None = dtype")
    num_workers: int = _f(0, "DataLoader worker processes")
    num_threads: Optional[int] = _f(None, "torch CPU threads for this process; "
                                          "None = leave as is")
    layout: str = _f("auto", "neighbour layout of the models: \"auto\" (each family's fast one) or "
                             "\"reference\" (the plain edge list: same numbers, slower; for debugging)")
    keep_freed_memory: bool = _f(False, "on a CPU device, have glibc keep the memory torch frees for "
                                        "the next step (ase_eqgnn.heap): faster, but it changes the "
                                        "whole process, so a library run leaves it off; eqgnn-train "
                                        "(which owns its process) turns it on")
    progress: bool = _f(True, "tqdm progress bars")

    # ------------------------------------------------------------------ optimisation
    lr: float = _f(1e-3, "AdamW learning rate (after warm-up)")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay")
    scheduler: str = _f("auto", "\"plateau\" (ReduceLROnPlateau on valid loss), \"cosine\" "
                                "(annealed over max_epochs, or over max_time after warm-up when "
                                "that comes first) or \"auto\": cosine when max_time is set, else "
                                "plateau")
    warmup_epochs: int = _f(0, "linear learning-rate warm-up before the schedule")
    lr_factor: float = _f(0.5, "plateau: multiply the lr by this on a plateau")
    lr_patience: int = _f(5, "plateau: epochs without improvement before reducing")
    min_lr: float = _f(1e-6, "floor of both schedules")
    ema_decay: float = _f(0.99, "EMA of weights per step (0 = no averaging); EMA weights are validated")
    clip_grad: Optional[float] = _f(10.0, "max gradient norm; None or 0 = no clipping")
    patience: Optional[int] = _f(None, "early stopping: epochs without validation improvement (0 = "
                                       f"never); None = {DEFAULT_PATIENCE}, or never when max_time "
                                       "is set")
    loss: str = _f("mse", "\"mse\" or \"huber\"")
    huber_delta: float = _f(0.01, "Huber transition point in the loss's units (eV/atom, eV/Å, eV/Å^3)")
    energy_weight: float = _f(1.0, "weight of the per-atom energy term (eV/atom)^2")
    forces_weight: float = _f(100.0, "weight of the force term (eV/Å)^2 per component")
    stress_weight: float = _f(1.0, "weight of the stress term (eV/Å^3)^2, frames with stress only")
    final_fraction: float = _f(0.0, "a final stage (MACE's SWA-like stage two) over this last "
                                    "fraction of the run (of max_time, else max_epochs): the cosine "
                                    "ends before it, then final_lr and final_energy_weight; best.pt "
                                    "is the stage's best; 0 = off. Needs the cosine schedule")
    final_energy_weight: float = _f(1000.0, "final stage: the energy weight (forces keep theirs)")
    final_lr: float = _f(1e-4, "final stage: its constant learning rate")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad value."""
        _choice("model", self.model, _model_names())
        check_hparams(self.hparams)  # the bounds a model file must keep, so every trained model loads
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("loss", self.loss, LOSSES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("layout", self.layout, LAYOUTS)
        _choice("split", self.split, SPLITS)
        if self.valid_dtype is not None:
            _choice("valid_dtype", self.valid_dtype, DTYPES)
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        for name in ("max_epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "num_workers", "lr_patience", "patience"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.valid_batch_size is not None and self.valid_batch_size < 1:
            raise ValueError(f"valid_batch_size must be >= 1, got {self.valid_batch_size}")
        if self.num_threads is not None and not 1 <= self.num_threads <= MAX_THREADS:
            raise ValueError(f"num_threads must be in [1, {MAX_THREADS}], got {self.num_threads}")
        if self.num_workers > MAX_WORKERS:
            raise ValueError(f"num_workers must be <= {MAX_WORKERS}, got {self.num_workers}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed}")
        if not CUTOFF_RANGE[0] <= self.cutoff <= CUTOFF_RANGE[1] and not math.isnan(self.cutoff):
            raise ValueError(f"cutoff must be in [{CUTOFF_RANGE[0]}, {CUTOFF_RANGE[1]}] Å, got {self.cutoff}")
        for name in ("lr", "cutoff", "huber_delta", "final_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite positive number, got {v}")
        for name in ("weight_decay", "min_lr", "energy_weight", "forces_weight", "stress_weight",
                     "final_energy_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if self.energy_weight == self.forces_weight == self.stress_weight == 0:
            raise ValueError("energy_weight, forces_weight and stress_weight are all 0: nothing to train")
        if not 0.0 <= self.final_fraction < 1.0:
            raise ValueError(f"final_fraction must be in [0, 1), got {self.final_fraction}")
        if self.final_fraction and self.schedule_kind != "cosine":
            raise ValueError("a final stage (final_fraction > 0) needs the cosine schedule: set "
                             "max_time (or scheduler: cosine)")
        if not 0.0 < self.lr_factor < 1.0:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"max_time must be a positive number of seconds, got {self.max_time}")
        if self.clip_grad is not None and self.clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0 (0 or null = off), got {self.clip_grad}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite positive number of eV, got {self.scale}")
        if not self.out:
            raise ValueError("out (the run directory) must not be empty")
        if self.cg_map is not None:
            from ..cg.training import check_temperature
            check_temperature(self.temperature)
            if self.forces_weight == 0:
                raise ValueError("a coarse-grained potential trains on forces alone: forces_weight "
                                 "must be > 0 with cg_map")

    # ------------------------------------------------------------------ helpers
    @property
    def schedule_kind(self) -> str:
        """The learning-rate schedule this run uses: ``scheduler``, with "auto" resolved."""
        if self.scheduler != "auto":
            return self.scheduler
        return "cosine" if self.max_time is not None else "plateau"

    @property
    def epoch_limit(self) -> Optional[int]:
        """``max_epochs`` as given, else the default: none with a time budget."""
        if self.max_epochs is not None:
            return self.max_epochs
        return None if self.max_time is not None else DEFAULT_MAX_EPOCHS

    @property
    def early_stopping_patience(self) -> int:
        """``patience`` as given, else the default: never with a time budget."""
        if self.patience is not None:
            return self.patience
        return 0 if self.max_time is not None else DEFAULT_PATIENCE

    @property
    def eval_batch_size(self) -> int:
        return self.valid_batch_size or 2 * self.batch_size

    def to_dict(self) -> Dict[str, Any]:
        """Plain-Python (YAML/JSON-able) copy of every field."""
        return dataclasses.asdict(self)


#: Keys that may differ between the run that wrote ``last.pt`` and the one resuming from it.
#: (``scheduler``: "auto" continues the run's schedule, another one must be the run's; see Trainer.)
RESUME_MUTABLE_KEYS = frozenset({
    "max_epochs", "max_time", "patience", "scheduler", "device", "num_workers", "num_threads", "progress",
    "keep_freed_memory", "layout",
    "test_data", "test_energies", "valid_batch_size", "valid_dtype",
})


def _model_names() -> Sequence[str]:
    from ..models import MODEL_NAMES

    return MODEL_NAMES


def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


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
