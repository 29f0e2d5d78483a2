"""Training the back-mapping VAE on all-atom MD trajectories.

The run folder, the epoch loop, the EMA, the learning-rate schedule, resuming and the log are the
ones every trainer of the package shares (:mod:`ase_eqgnn.train.run_dir`, :mod:`ase_eqgnn.train.loop`,
:mod:`~ase_eqgnn.train.ema`, :mod:`~ase_eqgnn.train.schedule`, :mod:`~ase_eqgnn.train.resume`); this
module supplies the data, the loss and the validation of one epoch (:class:`BackmapTask`).

Run folder (``out``), written only under these names and each file atomically:

- ``config.yaml``: the resolved configuration (defaults + file + overrides);
- ``last.pt`` (every epoch): the training state (weights, EMA, optimizer, schedule, epoch, elapsed
  time, history, random generators incl. the shuffling one), loadable with ``weights_only=True``;
- ``best.pt`` (lowest validation loss): a back-mapping model file of
  :func:`ase_eqgnn.cg.backmap.save_checkpoint` with the EMA weights;
- ``log.csv`` (one row per epoch) and ``learning_curve.png``.

Re-running with the same ``out`` and config resumes with nothing lost (``max_epochs``, ``max_time``,
``patience``, ``threads`` and ``device`` may change); a folder holding anything else is refused and
left as it was. ``init_from`` (a back-mapping model file of the same molecule and map) starts a new
run from its weights with a fresh optimizer: fine-tuning with other loss weights, data or schedule.
Loss per batch (see :mod:`ase_eqgnn.cg.losses`)::

    L = w_recon MSD(x_rec, x) + beta_t KL(q || p) + w_bond L_bond + w_angle L_angle
        + w_steric L_steric + w_sample (L_bond + w_angle L_angle + w_steric L_steric)(x ~ p(x|X))
        + w_sample_heavy MSD_heavy(x ~ p(x|X), x)

with ``beta_t`` ramped linearly over ``kl_warmup_epochs``; validation and ``best.pt`` use the EMA of
the weights (decay ``min(ema_decay, (1+n)/(10+n))`` after step n); the learning rate is cosine-decayed
from ``lr`` to ``lr_min`` over the run (progress = max(epoch / max_epochs, time / max_time)).

The library never changes its host process's allocator (``eqgnn-train-backmap`` may: it owns its
process, see :mod:`ase_eqgnn.heap`); ``threads`` sets torch's thread count when given.

Example
-------
>>> best = train_backmap({"traj": ["ala2_train.h5"], "map": "ala2-5bead", "out": "runs/bm",
...                       "max_time": 600})                                    # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import yaml
from ase.units import nm

from ..dtypes import resolve_dtype
from ..train.distributed import resolve_device
from ..train.ema import make_ema
from ..train.loop import EpochLoop, EpochTask
from ..train.plots import plot_learning_curve
from ..train.run_dir import RunDirectory
from ..train.schedule import EpochScheduler
from .backmap import bead_distance_stats, load_checkpoint, model_from_checkpoint, save_checkpoint
from .losses import (GeometryTerms, LossWeights, heavy_reconstruction_loss, kl_divergence,
                     reconstruction_loss)
from .maps import CGMap, build_map
from .metrics import evaluate_backmapping
from .model import BackmapConfig, BackmapVAE

__all__ = ["DEFAULT_CONFIG", "resolve_config", "load_trajectories", "train_backmap", "export_model",
           "BackmapTask"]

DEFAULT_CONFIG: Dict = {
    "traj": [], "top": None, "map": "ala2-5bead", "stride": 1, "max_frames": None,
    "val_fraction": 0.1, "seed": 0, "batch_size": 32, "lr": 2e-3, "lr_min": 5e-5,
    "weight_decay": 0.0, "max_epochs": 200, "max_time": None, "kl_warmup_epochs": 5,
    "grad_clip": 10.0, "ema_decay": 0.995, "patience": None, "dtype": "float32", "device": "cpu",
    "threads": None, "val_eval_frames": 200, "out": "runs/backmap", "init_from": None,
    "model": BackmapConfig().to_dict(), "loss": LossWeights().to_dict(),
}
#: Keys that may differ between the run that wrote ``last.pt`` and the one resuming from it.
RESUME_MUTABLE_KEYS = ("max_epochs", "max_time", "patience", "threads", "device")
#: What a back-mapping run writes besides config.yaml, last.pt and log.csv.
OUTPUTS = ("best.pt", "learning_curve.png")


# -- configuration -------------------------------------------------------------------------------
def resolve_config(config: Optional[Union[str, Path, Dict]] = None, **overrides) -> Dict:
    """Defaults, updated by a YAML file or dict, then by non-None keyword overrides; values checked.

    Paths become strings (``traj`` a list of them); a bad key or value is a ``ValueError`` naming it.
    """
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist or is not a file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config must be a mapping of keys to values")
    else:
        data = dict(config or {})
    for source in (data, {k: v for k, v in overrides.items() if v is not None}):
        for key, val in source.items():
            if key not in cfg:
                raise ValueError(f"unknown config key {key!r}; valid keys: {sorted(cfg)}")
            if key in ("model", "loss"):
                if not isinstance(val, dict):
                    raise ValueError(f"config key {key!r} must be a mapping, got {val!r}")
                cfg[key].update(val)
            else:
                cfg[key] = val
    BackmapConfig.from_dict(cfg["model"])  # validate keys
    LossWeights.from_dict(cfg["loss"])
    traj = cfg["traj"]
    cfg["traj"] = [str(traj)] if isinstance(traj, (str, Path)) else [str(p) for p in traj or []]
    for key in ("top", "out", "init_from"):
        cfg[key] = None if cfg[key] is None else str(cfg[key])
    _check_values(cfg)
    return cfg


def _check_values(cfg: Dict) -> None:
    def number(key: str, low: float, integer: bool = False, optional: bool = False,
               inclusive: bool = True, high: float = math.inf) -> None:
        v = cfg[key]
        if v is None and optional:
            return
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v >= low if inclusive else v > low) and v < high and (not integer or float(v).is_integer())
        if not ok:
            kind = "an integer" if integer else "a finite number"
            bound = f"{'>=' if inclusive else '>'} {low}" + (f" and < {high}" if high < math.inf else "")
            raise ValueError(f"config key {key!r} must be {kind} {bound}{' or null' if optional else ''}; "
                             f"got {v!r}")

    for key in ("stride", "batch_size", "max_epochs", "val_eval_frames"):
        number(key, 1, integer=True)
    for key in ("max_frames", "threads"):
        number(key, 1, integer=True, optional=True)
    number("patience", 0, integer=True, optional=True)
    number("kl_warmup_epochs", 0, integer=True)
    number("seed", 0, integer=True)
    number("lr", 0, inclusive=False)
    number("lr_min", 0)
    number("weight_decay", 0)
    number("grad_clip", 0, optional=True)
    number("max_time", 0, inclusive=False, optional=True)
    number("val_fraction", 0, inclusive=False, high=1)
    number("ema_decay", 0, high=1)
    resolve_dtype(cfg["dtype"])  # ValueError naming the choices


def load_trajectories(paths: Sequence[str], top: Optional[str] = None, stride: int = 1):
    """All-atom frames [F, n, 3] (Å, float64) and the mdtraj topology of the first file."""
    import mdtraj as md

    if not paths:
        raise ValueError("no training trajectory given (--traj)")
    xyz, topology = [], None
    for p in paths:
        if not Path(p).is_file():
            raise ValueError(f"trajectory {p} does not exist or is not a regular file")
        try:
            traj = md.load(str(p), top=top, stride=stride) if top else md.load(str(p), stride=stride)
        except Exception as exc:  # mdtraj raises many kinds for unreadable or mismatched files
            raise ValueError(f"cannot read trajectory {p} with mdtraj (give --top for formats "
                             f"without a topology): {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
        if topology is None:
            topology = traj.topology
        elif traj.n_atoms != topology.n_atoms:
            raise ValueError(f"{p} has {traj.n_atoms} atoms, the first trajectory {topology.n_atoms}")
        xyz.append(traj.xyz.astype(np.float64) * nm)
    if topology.n_bonds == 0:
        raise ValueError("the topology has no bonds; give a topology with bonds (--top PDB)")
    return np.concatenate(xyz), topology


# -- one epoch: loss, validation -----------------------------------------------------------------
def _loss_terms(model: BackmapVAE, geom: GeometryTerms, w: LossWeights, x: torch.Tensor,
                beta: float, sample_posterior: bool = True) -> Dict[str, torch.Tensor]:
    out = model(x, sample_posterior=sample_posterior)
    terms = {"recon": reconstruction_loss(out["x_recon"], x),
             "kl": kl_divergence(out["mu_q"], out["logvar_q"], out["mu_p"], out["logvar_p"])}
    g = geom(out["x_recon"], x, w.steric_threshold)
    total = (w.recon * terms["recon"] + beta * terms["kl"] + w.bond * g["bond"]
             + w.angle * g["angle"] + w.steric * g["steric"])
    if w.sample_geometry > 0 or w.sample_heavy_recon > 0:
        eps = torch.randn_like(out["mu_p"])
        z = out["mu_p"] + eps * torch.exp(0.5 * out["logvar_p"])
        x_sample = model.decode(z, out["X"])
        gs = geom(x_sample, x, w.steric_threshold)
        total = total + w.sample_geometry * (w.bond * gs["bond"] + w.angle * gs["angle"]
                                             + w.steric * gs["steric"])
        terms["sample_bond"] = gs["bond"]
        terms["sample_heavy_msd"] = heavy_reconstruction_loss(x_sample, x, geom.heavy)
        total = total + w.sample_heavy_recon * terms["sample_heavy_msd"]
    terms.update(g)
    terms["loss"] = total
    return terms


@torch.no_grad()
def _validate(model: BackmapVAE, geom: GeometryTerms, w: LossWeights, x_val: torch.Tensor,
              elements: List[str], bonds: np.ndarray, n_eval: int, gen: torch.Generator) -> Dict:
    model.eval()
    sums: Dict[str, float] = {}
    for xb in torch.split(x_val, 256):
        terms = _loss_terms(model, geom, w, xb, w.beta, sample_posterior=False)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(xb)
    res = {f"val_{k}": v / len(x_val) for k, v in sums.items()}
    xe = x_val[:n_eval]
    recon = model.reconstruct(xe).cpu().numpy()
    samp = model.sample(model.cg(xe), 1, gen).cpu().numpy()
    ref = xe.cpu().numpy()
    m_rec = evaluate_backmapping(recon[:, None], ref, elements, bonds)
    m_smp = evaluate_backmapping(samp[:, None], ref, elements, bonds)
    res.update({"val_recon_rmsd": m_rec["rmsd"], "val_sample_heavy_rmsd": m_smp["heavy_rmsd"],
                "val_sample_valid": m_smp["valid_ratio"],
                "val_sample_heavy_ged": m_smp["heavy_graph_edit_ratio"],
                "val_sample_clash": m_smp["clash_ratio"]})
    model.train()
    return res


def _init_weights(model: BackmapVAE, path: Union[str, Path], cg_map: CGMap, elements: List[str],
                  bonds: np.ndarray) -> None:
    """Load the weights of back-mapping checkpoint ``path`` into ``model`` (same molecule and map)."""
    ckpt = load_checkpoint(path)
    meta = json.loads(ckpt["meta"])
    if meta.get("elements") != list(elements) or sorted(map(tuple, meta.get("bonds", []))) != \
            sorted(map(tuple, bonds.tolist())):
        raise ValueError(f"init_from={path}: its molecule (atoms, bonds) differs from the training "
                         "trajectory's; fine-tune only on the molecule it was trained on")
    if CGMap.from_json(ckpt["cg_map"]).to_json() != cg_map.to_json():
        raise ValueError(f"init_from={path}: its CG map differs from this run's map")
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as err:
        raise ValueError(f"init_from={path}: its model does not match this run's model settings "
                         f"({str(err).splitlines()[0]})") from None


class BackmapTask(EpochTask):
    """A back-mapping run set up from a resolved config: data, model, optimizer, schedule, EMA and the
    :class:`~ase_eqgnn.train.loop.EpochLoop` (resumed from ``out/last.pt`` when it exists).

    The run folder is checked before any data is read, so a refused run has written nothing.
    """

    def __init__(self, cfg: Dict, progress: bool = True, log=None) -> None:
        self.cfg, self.progress = cfg, progress
        self.log = log or (lambda msg: print(msg, flush=True))
        self.run_dir = RunDirectory(cfg["out"], "backmap", cfg, RESUME_MUTABLE_KEYS, OUTPUTS)
        resume = self.run_dir.check()
        self.device = resolve_device(cfg["device"])
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        dtype = resolve_dtype(cfg["dtype"])

        xyz, self.topology = load_trajectories(cfg["traj"], cfg["top"], cfg["stride"])
        if cfg["max_frames"]:
            xyz = xyz[: int(cfg["max_frames"])]
        self.bonds = np.array([[a.index, b.index] for a, b in self.topology.bonds],
                              dtype=np.int64).reshape(-1, 2)
        self.elements = [a.element.symbol for a in self.topology.atoms]
        cg_map = build_map(cfg["map"], self.topology)
        perm = np.random.default_rng(cfg["seed"]).permutation(len(xyz))
        n_val = max(1, int(round(cfg["val_fraction"] * len(xyz))))
        if len(xyz) - n_val < 1:
            raise ValueError(f"{len(xyz)} frames are too few for a validation split")
        self.x_train = torch.as_tensor(xyz[perm[n_val:]], dtype=dtype, device=self.device)
        self.x_val = torch.as_tensor(xyz[perm[:n_val]], dtype=dtype, device=self.device)

        torch.manual_seed(cfg["seed"])
        self.model = BackmapVAE(cg_map, self.bonds, BackmapConfig.from_dict(cfg["model"])).to(self.device, dtype)
        if resume is None and cfg["init_from"]:
            _init_weights(self.model, cfg["init_from"], cg_map, self.elements, self.bonds)
            self.log(f"starting from the weights of {cfg['init_from']}")
        self.geom = GeometryTerms(self.elements, self.bonds).to(self.device)
        self.weights = LossWeights.from_dict(cfg["loss"])
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"],
                                           weight_decay=cfg["weight_decay"])
        self.scheduler = EpochScheduler(self.optimizer, "cosine", cfg["lr"], cfg["max_epochs"],
                                        min_lr=cfg["lr_min"], max_time=cfg["max_time"])
        self.ema = make_ema(self.model, cfg["ema_decay"])
        self.shuffle = torch.Generator().manual_seed(cfg["seed"] + 1)
        self.val_gen = torch.Generator(device=self.device)
        self.loop = EpochLoop(self.run_dir, self.model, self.optimizer, self.scheduler, self.ema,
                              max_epochs=cfg["max_epochs"], patience=cfg["patience"],
                              max_time=cfg["max_time"], log=self.log)
        if resume is not None:
            self.loop.load_state_dict(resume)
            self.shuffle.set_state(resume["shuffle_rng"])
            self.log(f"resuming {cfg['out']} at epoch {self.loop.epoch} ({self.loop.elapsed:.0f} s trained)")
        self.meta = {"elements": self.elements, "bonds": self.bonds.tolist(), "map_name": cfg["map"],
                     "bead_stats": bead_distance_stats(cg_map, self.bonds, cg_map.bead_positions(xyz)),
                     "training_data": list(cfg["traj"]), "n_train": len(self.x_train),
                     "n_val": len(self.x_val)}

    # ------------------------------------------------------------------ EpochTask
    def train_epoch(self, loop: EpochLoop) -> Tuple[Dict[str, float], bool]:
        beta = self.weights.beta * min(1.0, (loop.epoch + 1) / max(self.cfg["kl_warmup_epochs"], 1))
        batches = torch.split(torch.randperm(len(self.x_train), generator=self.shuffle), self.cfg["batch_size"])
        bar = batches
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(batches, desc=f"epoch {loop.epoch + 1}", leave=False, unit="batch")
        self.model.train()
        sums: Dict[str, float] = {}
        seen, out_of_time = 0, False
        for idx in bar:
            xb = self.x_train[idx.to(self.device)]
            terms = _loss_terms(self.model, self.geom, self.weights, xb, beta)
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if self.cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["grad_clip"])
            self.optimizer.step()
            self.ema.update_parameters(self.model)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
            seen += len(idx)
            if self.progress:
                bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", recon=f"{sums['recon'] / seen:.4f}")
            if loop.time_is_up():
                out_of_time = True
                break
        if self.progress:
            bar.close()
        return {"beta": beta, **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()}}, out_of_time

    def validate(self, loop: EpochLoop, train: Dict[str, float]) -> Tuple[float, Dict[str, float]]:
        val = _validate(self.ema.module, self.geom, self.weights, self.x_val, self.elements, self.bonds,
                        self.cfg["val_eval_frames"], self.val_gen.manual_seed(self.cfg["seed"]))
        return val["val_loss"], val

    def save_best(self, loop: EpochLoop, row: Dict[str, float]) -> None:
        val = {k: v for k, v in row.items() if k.startswith("val_")}
        save_checkpoint(self.run_dir.path("best.pt"), self.ema.module, self.topology,
                        {**self.meta, "epoch": loop.epoch, "val": val})

    def extra_state(self) -> Dict[str, Any]:
        return {"shuffle_rng": self.shuffle.get_state()}

    def epoch_line(self, row: Dict[str, float], improved: bool) -> str:
        return (f"epoch {int(row['epoch']):4d} lr {row['lr']:.2e} loss {row['train_loss']:.4f} "
                f"val {row['val_loss']:.4f} recon {row['val_recon_rmsd']:.3f} Å sample-heavy "
                f"{row['val_sample_heavy_rmsd']:.3f} Å valid {row['val_sample_valid']:.2f} clash "
                f"{row['val_sample_clash']:.3f} ({row['time']:.0f} s){' *' if improved else ''}")

    # ------------------------------------------------------------------ the run
    def fit(self) -> Path:
        """Train until a stopping rule holds; the learning curve; returns the path of ``best.pt``."""
        reason = self.loop.run(self)
        best = Path(self.run_dir.path("best.pt"))
        if self.loop.history:
            plot_learning_curve(self.run_dir.path("log.csv"), self.run_dir.path("learning_curve.png"),
                                losses=("train_loss", "val_loss"),
                                metrics=(("val_recon_rmsd", "recon RMSD (all)"),
                                         ("val_sample_heavy_rmsd", "sample RMSD (heavy)")),
                                metrics_label="validation RMSD (Å)", metrics_log=False)
        self.log(f"stopped: {reason}; best val loss {self.loop.best_loss:.5f} -> {best}")
        return best


def train_backmap(config: Optional[Union[str, Path, Dict]] = None, progress: bool = True,
                  **overrides) -> Path:
    """Train (or resume) a back-mapping VAE; returns the path of ``best.pt``."""
    return BackmapTask(resolve_config(config, **overrides), progress=progress).fit()


def export_model(checkpoint: Union[str, Path], path: Union[str, Path], metrics: Optional[Dict] = None
                 ) -> None:
    """Write the model of back-mapping model file ``checkpoint`` (e.g. a run's best.pt) to ``path``,
    with ``metrics`` added to its metadata as ``test_metrics``; the weights are copied unchanged."""
    from .backmap import topology_from_pdb_string

    ckpt = load_checkpoint(checkpoint)
    model, meta = model_from_checkpoint(ckpt)
    if metrics:
        meta["test_metrics"] = metrics
    save_checkpoint(path, model, topology_from_pdb_string(ckpt["topology_pdb"]), meta,
                    state=ckpt["model_state"])
