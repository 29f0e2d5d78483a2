"""Loading back-mapping models and turning CG trajectories into all-atom ones.

Checkpoint format (a ``torch.save`` dict, loadable with ``torch.load(weights_only=True)``)::

    format        "ase_eqgnn-backmap"         version   1
    model_config  JSON of BackmapConfig       cg_map    JSON of CGMap
    topology_pdb  the all-atom topology as PDB text
    meta          JSON: elements, bonds, bead-distance statistics, metrics, training data
    model_state   state_dict (EMA weights in best.pt and bundled files)

plus, in a trainer's ``last.pt``, the optimizer/EMA/RNG state (see :mod:`ase_eqgnn.cg.train`).
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

from ..checkpoint import atomic_torch_save
from .maps import CGMap
from .model import BackmapConfig, BackmapVAE

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "topology_to_pdb_string", "topology_from_pdb_string", "BackMapper", "read_cg",
           "write_all_atom", "bead_distance_stats", "WRITABLE"]

FORMAT = "ase_eqgnn-backmap"
VERSION = 1
WRITABLE = (".pdb", ".dcd", ".xtc", ".h5", ".hdf5")


# -- checkpoints (written atomically by the package's one atomic_torch_save) ---------------------
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
    """Write a back-mapping checkpoint atomically (``state`` replaces the model's state_dict)."""
    ckpt = {"format": FORMAT, "version": VERSION,
            "model_config": json.dumps(model.config.to_dict()),
            "cg_map": model.cg_map.to_json(),
            "topology_pdb": topology_to_pdb_string(topology),
            "meta": json.dumps(meta),
            "model_state": state if state is not None else model.state_dict()}
    ckpt.update(extra or {})
    atomic_torch_save(ckpt, path)


def load_checkpoint(path: Union[str, Path], map_location: str = "cpu") -> Dict:
    """Load and validate a checkpoint dict (weights_only); ValueError for corrupt/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or unsafe pickled objects
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated?): {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ase_eqgnn back-mapping checkpoint "
                         f"(format={ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt)})")
    if ckpt.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {ckpt['version']}; this code reads {VERSION}")
    return ckpt


def model_from_checkpoint(ckpt: Dict) -> Tuple[BackmapVAE, Dict]:
    """Rebuild the model (float32, eval mode) and its metadata from a loaded checkpoint."""
    meta = json.loads(ckpt["meta"])
    model = BackmapVAE(CGMap.from_json(ckpt["cg_map"]), np.array(meta["bonds"]).reshape(-1, 2),
                       BackmapConfig.from_dict(json.loads(ckpt["model_config"])))
    model.load_state_dict(ckpt["model_state"])
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

        ckpt = load_checkpoint(resolve_model(name_or_path, kind="backmap"))
        model, meta = model_from_checkpoint(ckpt)
        return cls(model, topology_from_pdb_string(ckpt["topology_pdb"]), meta, device, dtype)

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
