"""Training potentials on MD trajectories (the library behind ``eqgnn-train`` and ``eqgnn-eval``).

>>> from ase_eqgnn.train import TrainConfig, train, load_config
>>> cfg = load_config("training/configs/cu_emt.yaml")            # doctest: +SKIP
>>> result = train(cfg)                                         # doctest: +SKIP

Modules, one idea each. Shared by every trainer (potentials here, the back-mapping VAE in
:mod:`ase_eqgnn.cg.train`): :mod:`.run_dir` (the run folder: its guard, atomic files, ``log.csv``),
:mod:`.loop` (the epoch loop: time budget, early stopping, best/last checkpoints), :mod:`.resume`
(``last.pt``), :mod:`.ema`, :mod:`.schedule`, :mod:`.plots`. For potentials: :mod:`.config` (the
typed config, YAML and flags), :mod:`.data` (cached graphs, batches, E0/scale statistics),
:mod:`.losses`, :mod:`.metrics`, :mod:`.distributed` (DDP via torchrun), :mod:`.evaluate` (a trained
model on a data file), and :mod:`.trainer` (one epoch of a potential, and the run around it).
"""

from .config import TrainConfig, config_from_dict, load_config, save_config
from .data import dataset_statistics, fit_e0
from .evaluate import evaluate_model
from .resume import TrainStateError
from .run_dir import RunFolderError
from .trainer import TrainResult, Trainer, train

__all__ = ["TrainConfig", "config_from_dict", "load_config", "save_config", "Trainer", "TrainResult",
           "train", "fit_e0", "dataset_statistics", "evaluate_model", "TrainStateError", "RunFolderError"]
