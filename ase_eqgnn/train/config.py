"""`TrainConfig`: the one typed object that describes a training run.

YAML files and command-line flags fill it; flags win over the file, and the file over the defaults.
Unknown keys are an error naming the key and listing the valid ones. Paths in a config are taken
relative to the current working directory (where ``eqgnn-train`` is started), not to the YAML file.

Units: energies eV, lengths Å, times s (``max_time``), learning rates per optimizer step.

>>> cfg = TrainConfig(data="train.npz", out="run1")   # no model named: the default recipe
>>> cfg.model_name, cfg.model_hparams["correlation"], cfg.effective_batch_size, cfg.effective_lr
('tp', 3, 5, 0.005)
>>> TrainConfig(data="train.npz", model="painn").effective_batch_size  # a named family: generic settings
8
>>> cfg = config_from_dict({"data": "train.npz", "max_epochs": "20"})
>>> cfg.max_epochs
20
>>> TrainConfig(data="train.npz", max_time=600).epoch_limit  # a budget: only it ends the run
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..checkpoint.potential import CUTOFF_RANGE_A, check_hparams
from ..dtypes import DTYPES as _DTYPE_TABLE

__all__ = ["TrainConfig", "DEFAULT_RECIPE", "config_from_dict", "load_config", "save_config", "add_config_arguments",
           "config_from_args", "RESUME_MUTABLE_KEYS"]

SCHEDULERS = ("auto", "plateau", "cosine")
#: What the None defaults of ``max_epochs`` and ``patience`` mean for a run without ``max_time``.
DEFAULT_MAX_EPOCHS = 100
DEFAULT_PATIENCE = 30
#: What a run trains when ``model`` is left out: the recipe that measured best for a time budget on a
#: few hundred frames (docs/accuracy_log.md; training/configs/small_data_tp.yaml spells it out):
#: body-ordered ``tp``, 2 x 32 channels with l <= 1 features, a neighbour density to l = 3 contracted to
#: body order 4, small batches and a larger learning rate with a short warm-up.
DEFAULT_RECIPE: Dict[str, Any] = {
    "model": "tp",
    "hparams": {"features": 32, "l_max": 1, "sh_l_max": 3, "layers": 2, "correlation": 3},
    "batch_size": 5, "lr": 5e-3, "warmup_epochs": 2,
}
#: The optimiser settings left out when a model family is named (its hyper-parameters then default to
#: the family's own, ase_eqgnn.models).
NAMED_MODEL_SETTINGS: Dict[str, Any] = {"batch_size": 8, "lr": 1e-3, "warmup_epochs": 0}
#: The family a coarse-grained run (``cg_map``) trains when no model is named (with the settings above).
CG_DEFAULT_MODEL = "painn"
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
    model: Optional[str] = _f(None, "\"painn\", \"tp\" or \"egnn\"; None = the default recipe "
                                    "(body-ordered tp, 2 x 32, correlation 3, density to l = 3; batch "
                                    "5, lr 5e-3, warm-up 2: the best measured for a time budget), or "
                                    "painn with cg_map")
    hparams: Dict[str, Any] = field(default_factory=dict,
                                   metadata={"help": "family hyper-parameters (see build_model); "
                                                     "without a model they adjust the default recipe's"})
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
    batch_size: Optional[int] = _f(None, "structures per optimizer step (global, over all "
                                         "processes); None = 5 with the default recipe, else 8")
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
    lr: Optional[float] = _f(None, "AdamW learning rate (after warm-up); None = 5e-3 with the "
                                   "default recipe, else 1e-3")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay")
    scheduler: str = _f("auto", "\"plateau\" (ReduceLROnPlateau on valid loss), \"cosine\" "
                                "(annealed over max_epochs, or over max_time after warm-up when "
                                "that comes first) or \"auto\": cosine when max_time is set, else "
                                "plateau")
    warmup_epochs: Optional[int] = _f(None, "linear learning-rate warm-up before the schedule; "
                                            "None = 2 epochs with the default recipe, else 0")
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
        if self.model is not None:
            _choice("model", self.model, _model_names())
        check_hparams(self.model_hparams)  # the bounds a model file must keep, so every trained model loads
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
            if v is not None and not (math.isfinite(v) and v > 0):  # (lr None: the default's)
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
    def uses_default_recipe(self) -> bool:
        """No model named, for all-atom data: the recipe was measured there. A coarse-grained run
        (``cg_map``) without a model trains PaiNN with the generic settings, as before the recipe."""
        return self.model is None and self.cg_map is None

    @property
    def model_name(self) -> str:
        """The model family this run trains: ``model``, or the default's."""
        if self.model is not None:
            return self.model
        return DEFAULT_RECIPE["model"] if self.uses_default_recipe else CG_DEFAULT_MODEL

    @property
    def model_hparams(self) -> Dict[str, Any]:
        """The hyper-parameters given, over the default recipe's when it is used."""
        base = DEFAULT_RECIPE["hparams"] if self.uses_default_recipe else {}
        return {**base, **self.hparams}

    def _setting(self, name: str) -> Any:
        value = getattr(self, name)
        if value is not None:
            return value
        return (DEFAULT_RECIPE if self.uses_default_recipe else NAMED_MODEL_SETTINGS)[name]

    @property
    def effective_batch_size(self) -> int:
        """``batch_size``, or its default (the recipe's when no model is named)."""
        return self._setting("batch_size")

    @property
    def effective_lr(self) -> float:
        """``lr``, or its default (the recipe's when no model is named)."""
        return self._setting("lr")

    @property
    def effective_warmup_epochs(self) -> int:
        """``warmup_epochs``, or its default (the recipe's when no model is named)."""
        return self._setting("warmup_epochs")

    @property
    def eval_batch_size(self) -> int:
        return self.valid_batch_size or 2 * self.effective_batch_size

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


# Reading a config from YAML and flags lives beside it (one idea per module); re-exported here.
from .config_sources import (add_config_arguments, config_from_args, config_from_dict,  # noqa: E402
                             load_config, save_config)
