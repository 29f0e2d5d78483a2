"""Coarse-grain (CG) maps: which atom belongs to which bead, and where a bead sits.

A :class:`CGMap` is plain data. For ``n_atoms`` atoms and ``n_beads`` beads it holds

- ``assignment[a] = b``: atom ``a`` belongs to bead ``b`` (every atom to exactly one bead);
- ``kind``: how the bead position ``X_b`` follows from the atom positions ``x_a`` (Å):

  - ``"com"`` (centre of mass): ``X_b = sum_{a in b} m_a x_a / sum_{a in b} m_a``;
  - ``"cog"`` (centre of geometry, the unweighted mean, what CGVAE used for its residue maps):
    ``X_b = (1 / n_b) sum_{a in b} x_a``;
  - ``"anchor"``: ``X_b = x_{anchor_b}``, the position of one named atom of the bead;

- ``anchors[b]``: the anchor atom of each bead (required for ``"anchor"``, optional otherwise);
- ``names[b]``, ``types[b]``: bead labels; ``types`` feeds the networks' bead-type embedding.

In all cases ``X = W x`` with a fixed row-stochastic weight matrix ``W`` (:meth:`CGMap.weights`).
Builders: :func:`residue_map` (one bead per residue, com or cog), :func:`ca_map` (alpha carbons),
:func:`named_atoms_map` (explicit atom groups), :func:`anchor_map` (anchor atoms + bond-graph
assignment) and :func:`ala2_five_bead_map` (the 5-bead alanine-dipeptide backbone map).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

__all__ = ["CGMap", "MAP_KINDS", "residue_map", "ca_map", "named_atoms_map", "anchor_map",
           "ala2_five_bead_map", "build_map", "bond_graph_distances"]

MAP_KINDS = ("com", "cog", "anchor")


@dataclass
class CGMap:
    """A fixed many-to-one map from atoms to beads (see the module docstring for the maths)."""

    assignment: np.ndarray
    kind: str = "cog"
    anchors: Optional[np.ndarray] = None
    names: List[str] = field(default_factory=list)
    types: List[str] = field(default_factory=list)
    masses: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.assignment = np.asarray(self.assignment, dtype=np.int64).reshape(-1)
        if self.kind not in MAP_KINDS:
            raise ValueError(f"CG map kind must be one of {MAP_KINDS}, got {self.kind!r}")
        if self.assignment.size == 0:
            raise ValueError("a CG map needs at least one atom")
        n_beads = int(self.assignment.max()) + 1
        if self.assignment.min() < 0 or len(np.unique(self.assignment)) != n_beads:
            raise ValueError("bead indices must be 0..n_beads-1 with every bead holding an atom")
        if self.anchors is not None:
            self.anchors = np.asarray(self.anchors, dtype=np.int64).reshape(-1)
            if len(self.anchors) != n_beads:
                raise ValueError(f"{len(self.anchors)} anchors for {n_beads} beads")
            if np.any(self.assignment[self.anchors] != np.arange(n_beads)):
                raise ValueError("each anchor atom must belong to its own bead")
        elif self.kind == "anchor":
            raise ValueError("an 'anchor' map needs one anchor atom per bead")
        if self.masses is not None:
            self.masses = np.asarray(self.masses, dtype=np.float64).reshape(-1)
            if len(self.masses) != self.n_atoms or np.any(self.masses <= 0):
                raise ValueError("masses must be positive, one per atom")
        elif self.kind == "com":
            raise ValueError("a 'com' map needs atomic masses")
        self.names = list(self.names) or [f"B{b + 1}" for b in range(n_beads)]
        self.types = list(self.types) or list(self.names)
        if len(self.names) != n_beads or len(self.types) != n_beads:
            raise ValueError("names and types need one entry per bead")

    @property
    def n_atoms(self) -> int:
        return int(self.assignment.shape[0])

    @property
    def n_beads(self) -> int:
        return int(self.assignment.max()) + 1

    def atoms_of(self, bead: int) -> np.ndarray:
        """Indices of the atoms of ``bead`` (ascending)."""
        return np.flatnonzero(self.assignment == bead)

    def weights(self) -> np.ndarray:
        """``W`` [n_beads, n_atoms] with ``X = W x``; rows sum to one."""
        w = np.zeros((self.n_beads, self.n_atoms))
        if self.kind == "anchor":
            w[np.arange(self.n_beads), self.anchors] = 1.0
            return w
        per_atom = self.masses if self.kind == "com" else np.ones(self.n_atoms)
        w[self.assignment, np.arange(self.n_atoms)] = per_atom
        return w / w.sum(axis=1, keepdims=True)

    def bead_positions(self, xyz):
        """Bead positions [..., n_beads, 3] from atom positions [..., n_atoms, 3] (numpy or torch)."""
        if xyz.shape[-2] != self.n_atoms:
            raise ValueError(f"positions have {xyz.shape[-2]} atoms, the CG map {self.n_atoms}")
        w = self.weights()
        if isinstance(xyz, np.ndarray):
            return np.einsum("ba,...ac->...bc", w.astype(xyz.dtype, copy=False), xyz)
        import torch

        return torch.einsum("ba,...ac->...bc", torch.as_tensor(w, dtype=xyz.dtype, device=xyz.device), xyz)

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> Dict:
        return {"assignment": self.assignment.tolist(), "kind": self.kind,
                "anchors": None if self.anchors is None else self.anchors.tolist(),
                "names": list(self.names), "types": list(self.types),
                "masses": None if self.masses is None else self.masses.tolist()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Dict) -> "CGMap":
        unknown = set(data) - {"assignment", "kind", "anchors", "names", "types", "masses"}
        if unknown:
            raise ValueError(f"unknown CG map keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "CGMap":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CGMap) and self.to_dict() == other.to_dict()


# -- helpers ------------------------------------------------------------------------------------
def _masses(topology) -> np.ndarray:
    return np.array([a.element.mass for a in topology.atoms], dtype=np.float64)


def _adjacency(topology) -> List[List[int]]:
    if topology.n_bonds == 0:
        raise ValueError("the topology has no bonds; this map needs the bond graph "
                         "(load a PDB with standard residues or CONECT records)")
    adj: List[List[int]] = [[] for _ in range(topology.n_atoms)]
    for a, b in topology.bonds:
        adj[a.index].append(b.index)
        adj[b.index].append(a.index)
    return adj


def bond_graph_distances(topology, sources: Sequence[int]) -> np.ndarray:
    """Shortest-path bond counts [len(sources), n_atoms] (``inf`` where not connected)."""
    adj = _adjacency(topology)
    out = np.full((len(sources), topology.n_atoms), np.inf)
    for k, s in enumerate(sources):
        out[k, s] = 0
        queue = deque([s])
        while queue:
            i = queue.popleft()
            for j in adj[i]:
                if out[k, j] == np.inf:
                    out[k, j] = out[k, i] + 1
                    queue.append(j)
    return out


def _is_h(atom) -> bool:
    return atom.element is not None and atom.element.symbol == "H"


def _atom_index(topology, spec: Union[int, str]) -> int:
    """An atom index from an int, or from ``"RESNAME:ATOMNAME"`` / ``"RESNAME<resSeq>:ATOMNAME"``
    (the first match), or from an mdtraj selection string matching exactly one atom."""
    if isinstance(spec, (int, np.integer)):
        if not 0 <= int(spec) < topology.n_atoms:
            raise ValueError(f"atom index {spec} out of range (n_atoms={topology.n_atoms})")
        return int(spec)
    if ":" in spec:
        res, name = spec.split(":", 1)
        for atom in topology.atoms:
            r = atom.residue
            if atom.name == name and res in (r.name, f"{r.name}{r.resSeq}"):
                return atom.index
        raise ValueError(f"no atom {spec!r} in the topology")
    found = topology.select(spec)
    if len(found) != 1:
        raise ValueError(f"selection {spec!r} matches {len(found)} atoms, need exactly one")
    return int(found[0])


# -- builders -----------------------------------------------------------------------------------
def residue_map(topology, kind: str = "cog") -> CGMap:
    """One bead per residue; bead position the centre of geometry (``"cog"``, CGVAE's choice,
    the default) or of mass (``"com"``). Bead type = residue name."""
    if kind not in ("com", "cog"):
        raise ValueError("residue_map kind must be 'com' or 'cog'")
    residues = list(topology.residues)
    assignment = np.array([a.residue.index for a in topology.atoms])
    return CGMap(assignment, kind=kind, names=[f"{r.name}{r.resSeq}" for r in residues],
                 types=[r.name for r in residues], masses=_masses(topology) if kind == "com" else None)


def ca_map(topology) -> CGMap:
    """One bead per residue that has a CA atom; bead position = that CA. Atoms of a residue
    without CA (caps such as ACE/NME) join the CA bead nearest along the bond graph."""
    cas = [a.index for a in topology.atoms if a.name == "CA"]
    if not cas:
        raise ValueError("the topology has no alpha carbons (atom name 'CA')")
    assignment = np.empty(topology.n_atoms, dtype=np.int64)
    ca_of_res = {topology.atom(i).residue.index: b for b, i in enumerate(cas)}
    missing = [a.index for a in topology.atoms if a.residue.index not in ca_of_res]
    for atom in topology.atoms:
        if atom.residue.index in ca_of_res:
            assignment[atom.index] = ca_of_res[atom.residue.index]
    if missing:
        dist = bond_graph_distances(topology, cas)
        for i in missing:
            if not np.isfinite(dist[:, i].min()):
                raise ValueError(f"atom {i} is not bonded to any residue with a CA")
            assignment[i] = int(np.argmin(dist[:, i]))
    names = [f"{topology.atom(i).residue.name}{topology.atom(i).residue.resSeq}" for i in cas]
    return CGMap(assignment, kind="anchor", anchors=np.array(cas), names=names,
                 types=[topology.atom(i).residue.name for i in cas])


def named_atoms_map(topology, groups: Sequence[Sequence[Union[int, str]]], kind: str = "cog",
                    names: Optional[Sequence[str]] = None) -> CGMap:
    """Explicit atom groups, one per bead (atom indices or ``"RES:NAME"`` specs); every atom must
    appear exactly once. ``kind`` is ``"com"`` or ``"cog"``; use :func:`anchor_map` for anchors."""
    if kind not in ("com", "cog"):
        raise ValueError("named_atoms_map kind must be 'com' or 'cog' (anchor maps: anchor_map)")
    assignment = np.full(topology.n_atoms, -1, dtype=np.int64)
    for b, group in enumerate(groups):
        for spec in group:
            i = _atom_index(topology, spec)
            if assignment[i] != -1:
                raise ValueError(f"atom {i} is listed in beads {assignment[i]} and {b}")
            assignment[i] = b
    if np.any(assignment < 0):
        raise ValueError(f"atoms {np.flatnonzero(assignment < 0).tolist()} are in no bead")
    return CGMap(assignment, kind=kind, names=list(names) if names else [],
                 masses=_masses(topology) if kind == "com" else None)


def anchor_map(topology, anchors: Sequence[Union[int, str]], names: Optional[Sequence[str]] = None
               ) -> CGMap:
    """Beads at anchor atoms; each other heavy atom joins the bead whose anchor is nearest along
    the bond graph (ties go to the earlier bead); each hydrogen joins its heavy atom's bead."""
    idx = [_atom_index(topology, s) for s in anchors]
    if len(set(idx)) != len(idx):
        raise ValueError("anchor atoms must be distinct")
    dist = bond_graph_distances(topology, idx)
    if not np.all(np.isfinite(dist.min(axis=0))):
        raise ValueError("some atoms are not bonded to any anchor atom")
    assignment = np.argmin(dist, axis=0)  # argmin returns the first minimum: ties -> earlier bead
    assignment[idx] = np.arange(len(idx))
    adj = _adjacency(topology)
    for atom in topology.atoms:
        if _is_h(atom) and atom.index not in idx:
            heavy = [j for j in adj[atom.index] if not _is_h(topology.atom(j))]
            if heavy:
                assignment[atom.index] = assignment[heavy[0]]
    labels = [f"{topology.atom(i).residue.name}:{topology.atom(i).name}" for i in idx]
    return CGMap(assignment, kind="anchor", anchors=np.array(idx),
                 names=list(names) if names else labels, types=labels)


ALA2_ANCHORS = ("ACE:C", "ALA:N", "ALA:CA", "ALA:C", "NME:N")


def ala2_five_bead_map(topology) -> CGMap:
    """Alanine dipeptide (ACE-ALA-NME) 5-bead backbone map: beads at ACE C, ALA N, ALA CA, ALA C,
    NME N; the other atoms by :func:`anchor_map`'s bond-graph rule. Result:
    1 = ACE CH3 (+3 H), C, O; 2 = ALA N, H; 3 = CA, HA, CB (+3 H); 4 = ALA C, O;
    5 = NME N, H, C (+3 H)."""
    return anchor_map(topology, ALA2_ANCHORS)


def build_map(name: str, topology) -> CGMap:
    """A map by name: ``ala2-5bead``, ``residue`` (cog), ``residue-com``, ``ca``."""
    builders = {"ala2-5bead": ala2_five_bead_map, "residue": residue_map,
                "residue-cog": residue_map, "residue-com": lambda t: residue_map(t, "com"),
                "ca": ca_map}
    if name not in builders:
        raise ValueError(f"unknown CG map {name!r}; choose one of {sorted(builders)}")
    return builders[name](topology)
