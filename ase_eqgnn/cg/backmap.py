"""Loading back-mapping models and turning CG trajectories into all-atom ones.

Checkpoint format (a ``torch.save`` dict, loadable with ``torch.load(weights_only=True)``)::

    format        "ase_eqgnn-backmap"         version   2
    model_config  JSON of BackmapConfig       cg_map    JSON of CGMap
    topology_pdb  the all-atom topology as PDB text
    meta          JSON: elements, bonds, bead-distance statistics, metrics, training data
    model_state   state_dict (EMA weights in best.pt and bundled files)
    sha256        digest of all the other entries (:mod:`ase_eqgnn.checkpoint`)

plus, in a trainer's ``last.pt``, the optimizer/EMA/RNG state (see :mod:`ase_eqgnn.cg.train`).
Version 1 files (no digest) load with one warning. Files are read and written by the package's one
checkpoint module and checked as untrusted input before the model is built (:func:`load_checkpoint`):
every problem is a :class:`~ase_eqgnn.checkpoint.CheckpointError` naming the file.
Units: Å everywhere (mdtraj's nm are converted on reading and writing).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from ..checkpoint import (MAX_PARAMETERS, CheckpointError, FileKind, check_finite,
                          check_state_shapes, probe_state_shapes, read_checkpoint, write_checkpoint)
from .maps import CGMap
from .model import BackmapConfig, BackmapVAE

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "topology_to_pdb_string", "topology_from_pdb_string", "BackMapper", "read_cg",
           "write_all_atom", "bead_distance_stats", "WRITABLE"]

FORMAT = "ase_eqgnn-backmap"
#: 1: the layout above without a digest; 2: sealed with a SHA-256 digest.
VERSION = 2
BACKMAP_FILE = FileKind(format=FORMAT, version_key="version", version=VERSION, sealed_since=2,
                        what="back-mapping model file",
                        writer="eqgnn-train-backmap (ase_eqgnn.cg.train)")
#: Most atoms a back-mapping model file may describe: the encoder graph is built from dense
#: n_atoms x n_atoms arrays.
MAX_ATOMS = 2000
WRITABLE = (".pdb", ".dcd", ".xtc", ".h5", ".hdf5")


# -- checkpoints (the package's one checkpoint module reads, verifies and writes them) ------------
def topology_to_pdb_string(topology) -> str:
    """The topology as PDB text (zero coordinates; bonds by residue templates and CONECT)."""
    import mdtraj as md

    traj = md.Trajectory(np.zeros((1, topology.n_atoms, 3), dtype=np.float32), topology)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "top.pdb")
        traj.save_pdb(path)
        return Path(path).read_text()


def topology_from_pdb_string(text: str):
    """An mdtraj Topology from :func:`topology_to_pdb_string` text."""
    import mdtraj as md

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "top.pdb")
        Path(path).write_text(text)
        return md.load_pdb(path).topology


def save_checkpoint(path: Union[str, Path], model: BackmapVAE, topology, meta: Dict,
                    state: Optional[Dict] = None, extra: Optional[Dict] = None) -> None:
    """Write a back-mapping checkpoint, sealed and atomically (``state`` replaces the model's
    state_dict; ``extra``: more entries, e.g. a trainer's optimizer state)."""
    ckpt = {"format": FORMAT, "version": VERSION,
            "model_config": json.dumps(model.config.to_dict()),
            "cg_map": model.cg_map.to_json(),
            "topology_pdb": topology_to_pdb_string(topology),
            "meta": json.dumps(meta),
            "model_state": state if state is not None else model.state_dict()}
    ckpt.update(extra or {})
    write_checkpoint(ckpt, path)


def _parse(ckpt: Dict, where: str) -> Tuple[BackmapConfig, CGMap, np.ndarray, Dict]:
    """Config, CG map, bonds and metadata of a checkpoint dict, each checked for sense."""
    for key in ("model_config", "cg_map", "topology_pdb", "meta"):
        if not isinstance(ckpt.get(key), str):
            raise CheckpointError(f"{where} has no {key} text; the file is damaged")
    try:
        config = json.loads(ckpt["model_config"])
        cg = json.loads(ckpt["cg_map"])
        meta = json.loads(ckpt["meta"])
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{where} has unreadable JSON ({err}); the file is damaged") from None
    if not all(isinstance(x, dict) for x in (config, cg, meta)):
        raise CheckpointError(f"{where}: model_config, cg_map and meta must be JSON objects")
    assignment = cg.get("assignment")
    if not isinstance(assignment, list) or not 0 < len(assignment) <= MAX_ATOMS:
        raise CheckpointError(f"{where}: the CG map must assign 1 to {MAX_ATOMS} atoms to beads")
    try:
        cfg = BackmapConfig.from_dict(config)
        cg_map = CGMap.from_dict(cg)
        bonds = np.asarray(meta.get("bonds", []))
        if bonds.size == 0:
            bonds = np.zeros((0, 2), dtype=np.int64)
        if bonds.ndim != 2 or bonds.shape[1] != 2 or bonds.dtype.kind not in "iu" \
                or bonds.min(initial=0) < 0 or bonds.max(initial=0) >= cg_map.n_atoms:
            raise ValueError(f"meta: bonds must be pairs of atom indices 0..{cg_map.n_atoms - 1}")
        elements = meta.get("elements")
        if elements is not None and (not isinstance(elements, list) or len(elements) != cg_map.n_atoms
                                     or not all(isinstance(e, str) for e in elements)):
            raise ValueError(f"meta: elements must list {cg_map.n_atoms} element symbols")
        _check_bead_stats(meta.get("bead_stats"), cg_map.n_beads)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where} is invalid: {err}") from None
    return cfg, cg_map, bonds.astype(np.int64), meta


def _check_bead_stats(stats, n_beads: int) -> None:
    if not stats:
        return
    pairs = np.asarray(stats.get("pairs", []))
    mean, std = np.asarray(stats.get("mean", []), float), np.asarray(stats.get("std", []), float)
    if pairs.size == 0:
        return
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype.kind not in "iu" or pairs.min() < 0 \
            or pairs.max() >= n_beads or mean.shape != (len(pairs),) or std.shape != (len(pairs),) \
            or not np.all(np.isfinite(mean)) or not np.all(np.isfinite(std)) or np.any(std < 0):
        raise ValueError("meta: bead_stats must hold bead pairs with a finite mean and std each")


def load_checkpoint(path: Union[str, Path], map_location: str = "cpu") -> Dict:
    """Load and verify a back-mapping checkpoint dict (``weights_only``): digest, fields, model
    config (:class:`BackmapConfig` bounds), CG map, bonds, that the stored weights have the shapes
    the config implies (probed on the meta device) and are finite. Any problem, a missing file
    included, is a :class:`~ase_eqgnn.checkpoint.CheckpointError` (a ``ValueError``)."""
    path = os.fspath(path)
    where = f"back-mapping model file {path!r}"
    if not os.path.isfile(path):
        raise CheckpointError(f"{where} does not exist")
    ckpt = read_checkpoint(path, BACKMAP_FILE)
    cfg, cg_map, bonds, _ = _parse(ckpt, where)
    states = [k for k in ("model_state", "model_state_raw") if k in ckpt]
    if "model_state" not in states:
        raise CheckpointError(f"{where} has no model_state; the file is damaged")
    try:
        expected = probe_state_shapes(lambda: BackmapVAE(cg_map, bonds, cfg))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where} describes a model that cannot be built: {err}") from None
    for key in states:
        state = ckpt[key]
        if not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise CheckpointError(f"{where}: {key} is not a dict of tensors; the file is damaged")
        check_finite(state, f"{where} ({key})")
        if expected is not None:
            check_state_shapes(expected, state, f"{where} ({key})", MAX_PARAMETERS)
        if torch.device(map_location).type != "cpu":
            ckpt[key] = {k: v.to(map_location) for k, v in state.items()}
    return ckpt


def model_from_checkpoint(ckpt: Dict) -> Tuple[BackmapVAE, Dict]:
    """Rebuild the model (float32, eval mode) and its metadata from a :func:`load_checkpoint` dict."""
    cfg, cg_map, bonds, meta = _parse(ckpt, "back-mapping checkpoint")
    with torch.random.fork_rng(devices=[]):  # random initial weights, overwritten below
        model = BackmapVAE(cg_map, bonds, cfg)
    try:
        model.load_state_dict(ckpt["model_state"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"back-mapping checkpoint does not match its config "
                              f"({str(err).splitlines()[0]}); the file is damaged") from None
    return model.eval(), meta


def bead_distance_stats(cg_map: CGMap, bonds: np.ndarray, cg_xyz: np.ndarray) -> Dict:
    """Mean/std (Å) of the distances between beads joined by a bond, for input sanity checks."""
    a = cg_map.assignment
    pairs = sorted({tuple(sorted((int(a[i]), int(a[j])))) for i, j in bonds if a[i] != a[j]})
    if not pairs:
        return {"pairs": [], "mean": [], "std": []}
    p = np.array(pairs)
    d = np.linalg.norm(cg_xyz[:, p[:, 0]] - cg_xyz[:, p[:, 1]], axis=-1)
    return {"pairs": p.tolist(), "mean": d.mean(0).tolist(), "std": d.std(0).tolist()}


# -- reading and writing trajectories -----------------------------------------------------------
def _read_xyz(path: Path) -> Tuple[np.ndarray, List[str]]:
    lines = path.read_text().splitlines()
    frames, names, i = [], None, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            n = int(lines[i].split()[0])
        except ValueError:
            raise ValueError(f"{path}: line {i + 1} should hold an atom count") from None
        block = lines[i + 2:i + 2 + n]
        if len(block) != n:
            raise ValueError(f"{path}: truncated frame at line {i + 1}")
        rows = [ln.split() for ln in block]
        try:
            frames.append([[float(v) for v in r[1:4]] for r in rows])
        except (ValueError, IndexError):
            raise ValueError(f"{path}: malformed coordinates near line {i + 3}") from None
        names = names or [r[0] for r in rows]
        i += 2 + n
    if not frames:
        raise ValueError(f"{path}: no frames")
    return np.array(frames, dtype=np.float64), names


def read_cg(path: Union[str, Path], top: Optional[Union[str, Path]] = None
            ) -> Tuple[np.ndarray, Optional[List[str]]]:
    """CG coordinates [F, n_beads, 3] (Å) and bead names (or None) from ``.npy`` (Å), ``.xyz``
    (Å) or any mdtraj-readable trajectory (``top`` for formats without a topology)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CG trajectory {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        xyz = np.load(path)
        if xyz.ndim == 2:
            xyz = xyz[None]
        if xyz.ndim != 3 or xyz.shape[-1] != 3:
            raise ValueError(f"{path}: expected an array (frames, beads, 3), got {xyz.shape}")
        return xyz.astype(np.float64), None
    if suffix == ".xyz":
        return _read_xyz(path)
    import mdtraj as md

    try:
        traj = md.load(str(path), top=str(top)) if top else md.load(str(path))
    except Exception as exc:
        raise ValueError(f"cannot read CG trajectory {path} with mdtraj "
                         f"(give --top for formats without a topology): {exc}") from None
    return traj.xyz.astype(np.float64) * 10.0, [a.name for a in traj.topology.atoms]


def write_all_atom(path: Union[str, Path], xyz: np.ndarray, topology) -> None:
    """Write [F, n_atoms, 3] Å with ``topology`` in the format of the extension (PDB, DCD, XTC, HDF5)."""
    import mdtraj as md

    path = Path(path)
    if path.suffix.lower() not in WRITABLE:
        raise ValueError(f"output extension {path.suffix!r} not supported; use one of {WRITABLE}")
    path.parent.mkdir(parents=True, exist_ok=True)
    traj = md.Trajectory((np.asarray(xyz) / 10.0).astype(np.float32), topology)
    if path.exists():
        path.unlink()  # mdtraj's HDF5 writer refuses to overwrite
    traj.save(str(path))


# -- the back-mapper ----------------------------------------------------------------------------
class BackMapper:
    """A trained model plus its all-atom topology: CG frames (Å) -> all-atom frames (Å)."""

    def __init__(self, model: BackmapVAE, topology, meta: Dict, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.topology = topology
        self.meta = meta
        self.elements = meta.get("elements") or [a.element.symbol for a in topology.atoms]
        self.bonds = np.array(meta["bonds"], dtype=np.int64).reshape(-1, 2)

    @classmethod
    def load(cls, name_or_path: Union[str, Path], device: str = "cpu",
             dtype: torch.dtype = torch.float32) -> "BackMapper":
        """From a checkpoint path or a bundled model name (``"ala2"``)."""
        from ase_eqgnn.pretrained import resolve_model

        path = resolve_model(name_or_path, kind="backmap")
        ckpt = load_checkpoint(path)
        model, meta = model_from_checkpoint(ckpt)
        try:
            topology = topology_from_pdb_string(ckpt["topology_pdb"])
        except Exception as err:  # mdtraj's parser raises many kinds
            raise CheckpointError(f"back-mapping model file {str(path)!r}: unreadable topology "
                                  f"({type(err).__name__}: {err}); the file is damaged") from None
        if topology.n_atoms != model.n_atoms:
            raise CheckpointError(f"back-mapping model file {str(path)!r}: its topology has "
                                  f"{topology.n_atoms} atoms, its CG map {model.n_atoms}; the file is "
                                  "damaged")
        return cls(model, topology, meta, device, dtype)

    @property
    def cg_map(self) -> CGMap:
        return self.model.cg_map

    @property
    def n_beads(self) -> int:
        return self.model.n_beads

    def check_cg(self, cg_xyz: np.ndarray, bead_names: Optional[List[str]] = None) -> np.ndarray:
        """Validate CG input [F, n_beads, 3]; ValueError naming the problem."""
        cg_xyz = np.asarray(cg_xyz, dtype=np.float64)
        if cg_xyz.ndim == 2:
            cg_xyz = cg_xyz[None]
        if cg_xyz.ndim != 3 or cg_xyz.shape[-1] != 3:
            raise ValueError(f"CG coordinates must have shape (frames, beads, 3), got {cg_xyz.shape}")
        if cg_xyz.shape[1] != self.n_beads:
            raise ValueError(f"the CG input has {cg_xyz.shape[1]} beads but the model's map has "
                             f"{self.n_beads} ({', '.join(self.cg_map.names)}) in that order")
        if not np.all(np.isfinite(cg_xyz)):
            raise ValueError("the CG input contains NaN or infinite coordinates")
        names = list(self.cg_map.names)
        if bead_names is not None and sorted(bead_names) == sorted(names) and list(bead_names) != names:
            raise ValueError(f"bead order {list(bead_names)} differs from the model's {names}")
        stats = self.meta.get("bead_stats") or {}
        if stats.get("pairs"):
            p = np.array(stats["pairs"])
            d = np.median(np.linalg.norm(cg_xyz[:, p[:, 0]] - cg_xyz[:, p[:, 1]], axis=-1), axis=0)
            mean, std = np.array(stats["mean"]), np.array(stats["std"])
            bad = np.abs(d - mean) > np.maximum(6 * std, 0.75)
            if bad.any():
                k = int(np.argmax(bad))
                raise ValueError(
                    f"bead distances do not match the model's map: beads {names[p[k, 0]]}-"
                    f"{names[p[k, 1]]} are {d[k]:.2f} Å apart (training data {mean[k]:.2f} ± "
                    f"{std[k]:.2f} Å). Check the bead order ({', '.join(names)}) and that "
                    "coordinates are in Å (mdtraj formats are converted from nm).")
        return cg_xyz

    @torch.no_grad()
    def backmap(self, cg_xyz: np.ndarray, samples: int = 1, seed: Optional[int] = None,
                batch_size: int = 512, progress: bool = False, temperature: float = 1.0,
                bead_names: Optional[List[str]] = None) -> np.ndarray:
        """All-atom structures [F*samples, n_atoms, 3] (Å), frame-major (frame 0's samples first)."""
        if samples < 1:
            raise ValueError("samples must be >= 1")
        cg_xyz = self.check_cg(cg_xyz, bead_names)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed) if seed is not None else int(torch.seed() % (2**63)))
        per = max(1, batch_size // samples)
        out = []
        starts = range(0, len(cg_xyz), per)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="back-mapping", unit="batch")
        for s in starts:
            X = torch.as_tensor(cg_xyz[s:s + per], dtype=self.dtype, device=self.device)
            out.append(self.model.sample(X, samples, gen, temperature).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    @torch.no_grad()
    def reconstruct(self, xyz: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Encoder-decoder reconstruction [F, n_atoms, 3] with the posterior mean (Å)."""
        out = []
        for s in range(0, len(xyz), batch_size):
            x = torch.as_tensor(np.asarray(xyz[s:s + batch_size]), dtype=self.dtype, device=self.device)
            out.append(self.model.reconstruct(x).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def trajectory(self, xyz: np.ndarray):
        """An mdtraj Trajectory of all-atom frames (Å in, nm inside)."""
        import mdtraj as md

        return md.Trajectory((np.asarray(xyz) / 10.0).astype(np.float32), self.topology)


def evaluate_model(mapper: BackMapper, xyz: np.ndarray, samples: int = 5, seed: int = 0
                   ) -> Dict[str, float]:
    """Metrics of :mod:`ase_eqgnn.cg.metrics` on reference frames ``xyz`` [F, n_atoms, 3] (Å):
    ``recon_*`` for the posterior-mean reconstruction, ``sample_*`` for ``samples`` prior draws
    per frame conditioned on the frames' own CG structures."""
    from .metrics import evaluate_backmapping

    xyz = np.asarray(xyz, dtype=np.float64)
    recon = mapper.reconstruct(xyz)
    gen = mapper.backmap(mapper.cg_map.bead_positions(xyz), samples=samples, seed=seed)
    m_rec = evaluate_backmapping(recon[:, None], xyz, mapper.elements, mapper.bonds)
    m_smp = evaluate_backmapping(gen.reshape(len(xyz), samples, *xyz.shape[1:]), xyz,
                                 mapper.elements, mapper.bonds)
    out = {f"recon_{k}": v for k, v in m_rec.items() if k not in ("frames", "samples_per_frame")}
    out.update({f"sample_{k}": v for k, v in m_smp.items() if k not in ("frames", "samples_per_frame")})
    out["frames"], out["samples_per_frame"] = float(len(xyz)), float(samples)
    return out
