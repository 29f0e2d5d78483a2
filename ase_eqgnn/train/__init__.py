"""Training potentials on MD trajectories (the library behind ``eqgnn-train`` and ``eqgnn-eval``).

>>> from ase_eqgnn.train import TrainConfig, train, load_config
>>> cfg = load_config("training/configs/cu_emt.yaml")            # doctest: +SKIP
>>> result = train(cfg)                                         # doctest: +SKIP

Modules, one idea each: :mod:`.config` (the typed config, YAML and flags), :mod:`.data` (cached
graphs, batches, E0/scale statistics), :mod:`.losses`, :mod:`.metrics`, :mod:`.ema`,
:mod:`.schedule`, :mod:`.resume` (``last.pt``), :mod:`.distributed` (DDP via torchrun),
:mod:`.plots`, :mod:`.evaluate` (a trained model on a data file), and :mod:`.trainer` (the loop).
"""

from .config import TrainConfig, config_from_dict, load_config, save_config
from .data import dataset_statistics, fit_e0
from .evaluate import evaluate_model
from .resume import TrainStateError
from .trainer import TrainResult, Trainer, train

__all__ = ["TrainConfig", "config_from_dict", "load_config", "save_config", "Trainer", "TrainResult",
           "train", "fit_e0", "dataset_statistics", "evaluate_model", "TrainStateError"]
