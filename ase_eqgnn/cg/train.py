"""Training the back-mapping VAE on all-atom MD trajectories.

Run directory (``out``), as for the potential trainer:

- ``config.yaml``: the resolved configuration (defaults + file + flags);
- ``last.pt`` (every epoch) and ``best.pt`` (lowest validation loss, EMA weights): written
  atomically (temp file + fsync + ``os.replace``), loadable with ``torch.load(weights_only=True)``;
  configuration, CG map and topology are stored as JSON/PDB strings;
- ``log.csv``: one row per epoch, rewritten from the history stored in ``last.pt`` so that a kill
  at any moment leaves log and checkpoint consistent;
- ``learning_curve.png``.

Resume: when ``out/last.pt`` exists the run continues from it with nothing lost (weights, EMA,
optimizer, epoch, elapsed time, torch RNG and the shuffling generator); ``max_epochs`` and
``max_time`` may be raised on resume. ``init_from`` (a back-mapping checkpoint of the same
topology and map) starts a new run from its weights, with a fresh optimizer: fine-tuning with other
loss weights, data or schedule. Loss per batch (see :mod:`ase_eqgnn.cg.losses`)::

    L = w_recon MSD(x_rec, x) + beta_t KL(q || p) + w_bond L_bond + w_angle L_angle
        + w_steric L_steric + w_sample (L_bond + w_angle L_angle + w_steric L_steric)(x ~ p(x|X))
        + w_sample_heavy MSD_heavy(x ~ p(x|X), x)

with ``beta_t`` ramped linearly over ``kl_warmup_epochs``; validation, ``best.pt`` and exported
models use an exponential moving average of the weights (decay ``min(ema_decay, (1+t)/(10+t))``
at step t); learning rate cosine-decayed from ``lr``
to ``lr_min`` over the run (progress = max(epoch / max_epochs, time / max_time)).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import yaml

from ..checkpoint import write_checkpoint
from .backmap import VERSION, bead_distance_stats, load_checkpoint, save_checkpoint
from .losses import (GeometryTerms, LossWeights, heavy_reconstruction_loss, kl_divergence,
                     reconstruction_loss)
from .maps import CGMap, build_map
from .metrics import evaluate_backmapping
from .model import BackmapConfig, BackmapVAE

__all__ = ["DEFAULT_CONFIG", "resolve_config", "load_trajectories", "train_backmap"]

DEFAULT_CONFIG: Dict = {
    "traj": [], "top": None, "map": "ala2-5bead", "stride": 1, "max_frames": None,
    "val_fraction": 0.1, "seed": 0, "batch_size": 32, "lr": 2e-3, "lr_min": 5e-5,
    "weight_decay": 0.0, "max_epochs": 200, "max_time": None, "kl_warmup_epochs": 5,
    "grad_clip": 10.0, "ema_decay": 0.995, "patience": None, "dtype": "float32", "device": "cpu",
    "threads": None, "val_eval_frames": 200, "out": "runs/backmap", "init_from": None,
    "model": BackmapConfig().to_dict(), "loss": LossWeights().to_dict(),
}
_RESUME_OVERRIDABLE = ("max_epochs", "max_time", "patience", "threads", "device")


def resolve_config(config: Optional[Union[str, Path, Dict]] = None, **overrides) -> Dict:
    """Defaults, updated by a YAML file or dict, then by non-None keyword overrides."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if isinstance(config, (str, Path)):
        data = yaml.safe_load(Path(config).read_text()) or {}
    else:
        data = dict(config or {})
    for source in (data, {k: v for k, v in overrides.items() if v is not None}):
        for key, val in source.items():
            if key not in cfg:
                raise ValueError(f"unknown config key {key!r}; valid keys: {sorted(cfg)}")
            if key in ("model", "loss"):
                cfg[key].update(val)
            else:
                cfg[key] = val
    BackmapConfig.from_dict(cfg["model"])  # validate keys
    LossWeights.from_dict(cfg["loss"])
    if isinstance(cfg["traj"], str):
        cfg["traj"] = [cfg["traj"]]
    if cfg["dtype"] not in ("float32", "float64"):
        raise ValueError("dtype must be float32 or float64")
    return cfg


def load_trajectories(paths: Sequence[str], top: Optional[str] = None, stride: int = 1):
    """All-atom frames [F, n, 3] (Å, float64) and the mdtraj topology of the first file."""
    import mdtraj as md

    if not paths:
        raise ValueError("no training trajectory given (--traj)")
    xyz, topology = [], None
    for p in paths:
        if not Path(p).is_file():
            raise ValueError(f"trajectory {p} does not exist")
        traj = md.load(str(p), top=top, stride=stride) if top else md.load(str(p), stride=stride)
        if topology is None:
            topology = traj.topology
        elif traj.n_atoms != topology.n_atoms:
            raise ValueError(f"{p} has {traj.n_atoms} atoms, the first trajectory {topology.n_atoms}")
        xyz.append(traj.xyz.astype(np.float64) * 10.0)
    if topology.n_bonds == 0:
        raise ValueError("the topology has no bonds; give a topology with bonds (--top PDB)")
    return np.concatenate(xyz), topology


def _bonds(topology) -> np.ndarray:
    return np.array([[a.index, b.index] for a, b in topology.bonds], dtype=np.int64).reshape(-1, 2)


def _lr(cfg: Dict, epoch: int, elapsed: float) -> float:
    p = epoch / max(cfg["max_epochs"], 1)
    if cfg["max_time"]:
        p = max(p, elapsed / cfg["max_time"])
    p = min(p, 1.0)
    return cfg["lr_min"] + 0.5 * (cfg["lr"] - cfg["lr_min"]) * (1 + math.cos(math.pi * p))


def _write_log(path: Path, history: List[Dict]) -> None:
    if not history:
        return
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def _plot(path: Path, history: List[Dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].semilogy(ep, [h["train_loss"] for h in history], label="train loss")
    axes[0].semilogy(ep, [h["val_loss"] for h in history], label="val loss")
    axes[0].set_xlabel("epoch")
    axes[0].legend()
    axes[1].plot(ep, [h["val_recon_rmsd"] for h in history], label="recon RMSD (all)")
    axes[1].plot(ep, [h["val_sample_heavy_rmsd"] for h in history], label="sample RMSD (heavy)")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("Å")
    axes[1].legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


class _Batches:
    """Shuffled mini-batches of frame indices from a seeded torch generator (state saved)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def epoch(self) -> List[torch.Tensor]:
        perm = torch.randperm(self.n, generator=self.gen)
        return list(torch.split(perm, self.batch_size))


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


def train_backmap(config: Optional[Union[str, Path, Dict]] = None, progress: bool = True,
                  **overrides) -> Path:
    """Train (or resume) a back-mapping VAE; returns the path of ``best.pt``."""
    cfg = resolve_config(config, **overrides)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    resume = load_checkpoint(last_path) if last_path.exists() else None
    if resume is not None:
        saved = json.loads(resume["train_config"])
        for key in _RESUME_OVERRIDABLE:
            if key in overrides and overrides[key] is not None:
                saved[key] = overrides[key]
        cfg = resolve_config(saved)
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    dtype = torch.float64 if cfg["dtype"] == "float64" else torch.float32
    device = torch.device(cfg["device"])
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    xyz, topology = load_trajectories(cfg["traj"], cfg["top"], cfg["stride"])
    if cfg["max_frames"]:
        xyz = xyz[: int(cfg["max_frames"])]
    bonds = _bonds(topology)
    elements = [a.element.symbol for a in topology.atoms]
    cg_map = CGMap.from_json(resume["cg_map"]) if resume else build_map(cfg["map"], topology)
    rng = np.random.default_rng(cfg["seed"])
    perm = rng.permutation(len(xyz))
    n_val = max(1, int(round(cfg["val_fraction"] * len(xyz))))
    if len(xyz) - n_val < 1:
        raise ValueError(f"{len(xyz)} frames are too few for a validation split")
    x_train = torch.as_tensor(xyz[perm[n_val:]], dtype=dtype, device=device)
    x_val = torch.as_tensor(xyz[perm[:n_val]], dtype=dtype, device=device)

    torch.manual_seed(cfg["seed"])
    model = BackmapVAE(cg_map, bonds, BackmapConfig.from_dict(cfg["model"])).to(device, dtype)
    geom = GeometryTerms(elements, bonds).to(device)
    weights = LossWeights.from_dict(cfg["loss"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    ema = copy.deepcopy(model)
    batches = _Batches(len(x_train), cfg["batch_size"], cfg["seed"] + 1)
    val_gen = torch.Generator(device=device)
    epoch, elapsed, best, history, stale = 0, 0.0, float("inf"), [], 0
    if resume is None and cfg["init_from"]:
        _init_weights(model, cfg["init_from"], cg_map, elements, bonds)
        ema.load_state_dict(model.state_dict())
        print(f"starting from the weights of {cfg['init_from']}")
    if resume is not None:
        model.load_state_dict(resume["model_state_raw"])
        ema.load_state_dict(resume["model_state"])
        opt.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["rng_torch"])
        batches.gen.set_state(resume["rng_shuffle"])
        epoch, elapsed = int(resume["epoch"]), float(resume["elapsed"])
        best, stale = float(resume["best_val"]), int(resume["stale"])
        history = json.loads(resume["history"])
        print(f"resuming {out} at epoch {epoch} ({elapsed:.0f} s trained)")
    meta = {"elements": elements, "bonds": bonds.tolist(), "map_name": cfg["map"],
            "bead_stats": bead_distance_stats(cg_map, bonds, cg_map.bead_positions(xyz)),
            "training_data": [str(p) for p in cfg["traj"]], "n_train": len(x_train),
            "n_val": len(x_val)}

    def stop() -> Optional[str]:
        if epoch >= cfg["max_epochs"]:
            return "max_epochs"
        if cfg["max_time"] and elapsed >= cfg["max_time"]:
            return "max_time"
        if cfg["patience"] and stale >= cfg["patience"]:
            return "early stopping"
        return None

    model.train()
    reason = stop()
    while reason is None:
        t0 = time.time()
        lr = _lr(cfg, epoch, elapsed)
        for group in opt.param_groups:
            group["lr"] = lr
        beta = weights.beta * min(1.0, (epoch + 1) / max(cfg["kl_warmup_epochs"], 1))
        idx_list = batches.epoch()
        bar = idx_list
        if progress:
            from tqdm import tqdm

            bar = tqdm(idx_list, desc=f"epoch {epoch + 1}", leave=False, unit="batch")
        tot, n_seen = {}, 0
        for step, idx in enumerate(bar, start=epoch * len(idx_list)):
            xb = x_train[idx.to(device)]
            terms = _loss_terms(model, geom, weights, xb, beta)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            opt.step()
            with torch.no_grad():
                d = min(cfg["ema_decay"], (1.0 + step) / (10.0 + step))  # EMA warm-up
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.mul_(d).add_(pm, alpha=1 - d)
            for k, v in terms.items():
                tot[k] = tot.get(k, 0.0) + float(v.detach()) * len(idx)
            n_seen += len(idx)
            if progress:
                bar.set_postfix(loss=f"{tot['loss'] / n_seen:.4f}", recon=f"{tot['recon'] / n_seen:.4f}")
        val = _validate(ema, geom, weights, x_val, elements, bonds,
                        cfg["val_eval_frames"], val_gen.manual_seed(cfg["seed"]))
        epoch += 1
        elapsed += time.time() - t0
        row = {"epoch": epoch, "lr": lr, "beta": beta, "time_s": round(elapsed, 2),
               **{f"train_{k}": v / n_seen for k, v in tot.items()}, **val}
        history.append(row)
        improved = val["val_loss"] < best
        if improved:
            best, stale = val["val_loss"], 0
            save_checkpoint(best_path, ema, topology, {**meta, "epoch": epoch, "val": val})
        else:
            stale += 1
        reason = stop()
        extra = {"model_state_raw": model.state_dict(), "optimizer": opt.state_dict(),
                 "rng_torch": torch.get_rng_state(), "rng_shuffle": batches.gen.get_state(),
                 "epoch": epoch, "elapsed": elapsed, "best_val": best, "stale": stale,
                 "history": json.dumps(history), "train_config": json.dumps(cfg)}
        save_checkpoint(last_path, ema, topology, {**meta, "epoch": epoch, "val": val}, extra=extra)
        _write_log(out / "log.csv", history)
        _plot(out / "learning_curve.png", history)
        print(f"epoch {epoch:4d} lr {lr:.2e} loss {row['train_loss']:.4f} val {val['val_loss']:.4f} "
              f"recon {val['val_recon_rmsd']:.3f} Å sample-heavy {val['val_sample_heavy_rmsd']:.3f} Å "
              f"valid {val['val_sample_valid']:.2f} clash {val['val_sample_clash']:.3f} "
              f"({elapsed:.0f} s){' *' if improved else ''}", flush=True)
    print(f"stopped: {reason}; best val loss {best:.5f} -> {best_path}")
    return best_path


def export_model(checkpoint: Union[str, Path], path: Union[str, Path], metrics: Optional[Dict] = None
                 ) -> None:
    """Copy the model part of a run checkpoint (no optimizer state) to ``path``, adding metrics."""
    ckpt = load_checkpoint(checkpoint)
    meta = json.loads(ckpt["meta"])
    if metrics:
        meta["test_metrics"] = metrics
    slim = {k: ckpt[k] for k in ("format", "model_config", "cg_map", "topology_pdb")}
    slim.update(version=VERSION, meta=json.dumps(meta), model_state=ckpt["model_state"])
    write_checkpoint(slim, path)  # sealed with a new digest
