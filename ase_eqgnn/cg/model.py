"""The back-mapping VAE (after CGVAE, Wang et al. ICML 2022), pure torch.

Notation: all-atom positions ``x`` [n_atoms, 3] Å, CG bead positions ``X = W x`` [n_beads, 3]
(:class:`~ase_eqgnn.cg.maps.CGMap`), latents ``z`` [n_beads, latent_dim].

- Encoder ``q(z | x, X)``: PaiNN-style message passing (scalar ``s`` and vector ``v`` channels) on a
  graph whose nodes are the atoms *and* the beads. Edges (fixed by the topology, so the network is
  smooth in the coordinates): atom pairs up to ``encoder_bond_hops`` bonds apart (both ways), each
  atom into its own bead and (``encoder_bead_links="bonded"``) the beads bonded to it, and all bead
  pairs. An atom's messages into its bead carry ``x_a - X_b``, its position relative to the bead. Only differences of positions enter, so
  the latents are translation invariant; only norms and dot products reach the scalars, so they are
  rotation invariant. The bead node's scalars and the mean scalars of its atoms give
  ``(mu_q, log sigma_q^2)`` per bead.
- Prior ``p(z | X)``: the same layers on the CG graph (bead type + bead index embeddings), giving
  ``(mu_p, log sigma_p^2)`` per bead.
- Decoder ``p(x | z, X)``: the layers on the CG graph with ``z`` in the initial scalars, then for atom
  ``a`` of bead ``b`` in slot ``k`` (its rank inside the bead)::

      x_a = X_b + o_a,     o_a = sum_f c_{bkf}(s_b) v_{b,:,f}

  a combination of the bead's vector channels with invariant coefficients, hence rotation
  equivariant: ``x(R X + t) = R x(X) + t`` for the same ``z``. The offsets are then projected so the
  output maps back exactly onto the input beads: for an ``anchor`` bead the anchor's offset is
  zero; for ``com``/``cog`` beads the weighted mean offset is subtracted (``sum_a W_ba o_a = 0``).

Chirality: the layers' vector update includes cross products ``(A v) x (B v)`` of channel mixtures.
Cross products are pseudo-vectors (``(Ma) x (Mb) = det(M) M (a x b)``), so the network is SO(3)- but
not O(3)-equivariant: the mirror image of a CG input is *not* decoded into the mirror image, as
L- and D-amino acids are different molecules. ``mirror_equivariant=True`` drops the cross products
(and so the pseudo-scalars), giving an E(3)-equivariant model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .maps import CGMap
from .settings import Settings

__all__ = ["BackmapConfig", "BackmapVAE", "EquivariantLayer", "RadialBasis"]

_EPS = 1e-9


@dataclass
class BackmapConfig(Settings):
    """Hyper-parameters of :class:`BackmapVAE` (lengths in Å)."""

    what: ClassVar[str] = "model config"

    features: int = 48
    latent_dim: int = 16
    encoder_layers: int = 2
    prior_layers: int = 2
    decoder_layers: int = 3
    n_rbf: int = 16
    atom_cutoff: float = 8.0
    cg_cutoff: float = 12.0
    encoder_bond_hops: int = 1
    encoder_bead_links: str = "bonded"
    mirror_equivariant: bool = False
    logvar_min: float = -12.0
    logvar_max: float = 4.0

    #: Inclusive bounds of each number: generous for any molecule the dense graphs of this model
    #: suit, and small enough that a model file cannot ask for an allocation that exhausts memory.
    BOUNDS: ClassVar[Dict[str, Tuple[float, float]]] = {
        "features": (1, 1024), "latent_dim": (1, 256), "encoder_layers": (1, 32),
        "prior_layers": (1, 32), "decoder_layers": (1, 32), "n_rbf": (1, 256),
        "atom_cutoff": (0.1, 100.0), "cg_cutoff": (0.1, 200.0), "encoder_bond_hops": (0, 16),
        "logvar_min": (-50.0, 50.0), "logvar_max": (-50.0, 50.0),
    }
    BEAD_LINKS: ClassVar[Tuple[str, ...]] = ("own", "bonded")

    def __post_init__(self) -> None:
        """ValueError naming the first setting of the wrong type or outside :attr:`BOUNDS`."""
        for name, (low, high) in self.BOUNDS.items():
            value = getattr(self, name)
            integer = isinstance(low, int)
            ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) \
                and not isinstance(value, bool) and (isinstance(value, int) or math.isfinite(value))
            if not ok or not low <= value <= high:
                kind = "an integer" if integer else "a number"
                raise ValueError(f"model config: {name} must be {kind} in [{low}, {high}], "
                                 f"got {value!r}")
            if not integer:
                setattr(self, name, float(value))
        if self.logvar_min >= self.logvar_max:
            raise ValueError(f"model config: logvar_min ({self.logvar_min}) must be below logvar_max "
                             f"({self.logvar_max})")
        if self.encoder_bead_links not in self.BEAD_LINKS:
            raise ValueError(f"model config: encoder_bead_links must be one of {self.BEAD_LINKS}, got "
                             f"{self.encoder_bead_links!r}")
        if not isinstance(self.mirror_equivariant, bool):
            raise ValueError(f"model config: mirror_equivariant must be true or false, got "
                             f"{self.mirror_equivariant!r}")



def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


class RadialBasis(nn.Module):
    """Gaussians ``exp(-(d - mu_k)^2 / (2 w^2))`` on [0, cutoff] times the cosine envelope
    ``0.5 (cos(pi d / cutoff) + 1)`` for ``d < cutoff`` (0 beyond), so far edges fade smoothly."""

    def __init__(self, n_rbf: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf))
        self.width = cutoff / max(n_rbf - 1, 1)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        env = 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0) * (d < self.cutoff).to(d.dtype)
        g = torch.exp(-0.5 * ((d[..., None] - self.centers) / self.width) ** 2)
        return g * env[..., None]


class EquivariantLayer(nn.Module):
    """One PaiNN interaction + update (Schütt et al. 2021) on a fixed edge list, batched over frames.

    Message ``j -> i`` with ``r_ij = p_j - p_i``, ``u_ij = r_ij / |r_ij|``, filter ``W(e_ij)``::

        (a, b, c) = phi(s_j) * W(e_ij)
        s_i += sum_j a / sqrt(deg),   v_i += sum_j (b v_j + c u_ij) / sqrt(deg)

    update with channel mixes ``U, V``: ``(a_vv, a_sv, a_ss) = psi(s, |V v|)``,
    ``s += a_ss + a_sv <U v, V v>``, ``v += a_vv U v`` and, when chiral,
    ``v += g(s) (A v) x (B v)`` (pseudo-vector term, breaks mirror symmetry)."""

    def __init__(self, features: int, n_edge: int, chiral: bool) -> None:
        super().__init__()
        f = features
        self.features = f
        self.phi = _mlp(f, f, 3 * f)
        self.filter = nn.Linear(n_edge, 3 * f)
        self.mix_u = nn.Linear(f, f, bias=False)
        self.mix_v = nn.Linear(f, f, bias=False)
        self.psi = _mlp(2 * f, f, 3 * f)
        self.norm = nn.LayerNorm(f)
        self.chiral = chiral
        if chiral:
            self.mix_a = nn.Linear(f, f, bias=False)
            self.mix_b = nn.Linear(f, f, bias=False)
            self.gate = nn.Linear(f, f)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, 0.1)

    def forward(self, s: torch.Tensor, v: Optional[torch.Tensor], src: torch.Tensor, dst: torch.Tensor,
                unit: torch.Tensor, edge_feat: torch.Tensor, inv_sqrt_deg: float
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Flattened layout: ``s`` [nodes, F], ``v`` [nodes, 3, F] (None = zeros), edges over all
        frames' nodes, ``unit`` [edges, 3], ``edge_feat`` [edges, n_edge]."""
        f = self.features
        x = self.phi(s).index_select(0, src) * self.filter(edge_feat)
        a, b, c = torch.split(x, f, dim=-1)
        msg_v = c[:, None, :] * unit[..., None]
        if v is not None:
            msg_v = msg_v + b[:, None, :] * v.index_select(0, src)
        else:  # first layer: no vector features yet
            v = s.new_zeros(s.shape[0], 3, f)
        s = s + s.new_zeros(s.shape).index_add(0, dst, a) * inv_sqrt_deg
        v = v + v.new_zeros(v.shape).index_add(0, dst, msg_v) * inv_sqrt_deg
        uv, vv = self.mix_u(v), self.mix_v(v)
        vnorm = torch.sqrt((vv * vv).sum(dim=1) + _EPS)
        a_vv, a_sv, a_ss = torch.split(self.psi(torch.cat([self.norm(s), vnorm], -1)), f, dim=-1)
        s = s + a_ss + a_sv * (uv * vv).sum(dim=1)
        v = v + a_vv[:, None, :] * uv
        if self.chiral:
            cross = torch.linalg.cross(self.mix_a(v), self.mix_b(v), dim=1)
            v = v + self.gate(s)[:, None, :] * cross
        return s, v


class _GraphNet(nn.Module):
    """A stack of :class:`EquivariantLayer` on a fixed directed edge list ``(src, dst)`` with a
    per-edge kind (one-hot appended to the radial features)."""

    def __init__(self, cfg: BackmapConfig, n_layers: int, src: np.ndarray, dst: np.ndarray,
                 kind: np.ndarray, n_nodes: int, n_kinds: int, cutoffs: Tuple[float, ...],
                 range_group: Optional[np.ndarray] = None) -> None:
        super().__init__()
        self.register_buffer("src", torch.as_tensor(src, dtype=torch.long))
        self.register_buffer("dst", torch.as_tensor(dst, dtype=torch.long))
        self.register_buffer("kind", torch.as_tensor(kind, dtype=torch.long))
        group = np.zeros(len(src), dtype=np.int64) if range_group is None else range_group
        self.register_buffer("range_group", torch.as_tensor(group, dtype=torch.long))
        self.n_kinds = n_kinds
        deg = max(len(src) / max(n_nodes, 1), 1.0)
        self.inv_sqrt_deg = 1.0 / math.sqrt(deg)
        self.rbfs = nn.ModuleList([RadialBasis(cfg.n_rbf, c) for c in cutoffs])
        self.layers = nn.ModuleList([EquivariantLayer(cfg.features, cfg.n_rbf + n_kinds,
                                                      not cfg.mirror_equivariant)
                                     for _ in range(n_layers)])

    def forward(self, pos: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``pos`` [F, nodes, 3], ``s`` [F, nodes, feat] -> (s [F, nodes, feat], v [F, nodes, 3, feat])."""
        frames, nodes = pos.shape[:2]
        r = pos[:, self.src] - pos[:, self.dst]
        d = torch.sqrt((r * r).sum(-1) + _EPS)
        unit = (r / d[..., None]).reshape(-1, 3)
        rbf = pos.new_zeros(*d.shape, self.rbfs[0].centers.numel())
        for g, basis in enumerate(self.rbfs):  # one radial range per edge group
            sel = self.range_group == g
            rbf[:, sel] = basis(d[:, sel])
        onehot = nn.functional.one_hot(self.kind, self.n_kinds).to(pos.dtype)
        edge_feat = torch.cat([rbf, onehot.expand(frames, -1, -1)], -1).reshape(-1, rbf.shape[-1] + self.n_kinds)
        offset = torch.arange(frames, device=pos.device)[:, None] * nodes
        src = (self.src[None] + offset).reshape(-1)
        dst = (self.dst[None] + offset).reshape(-1)
        h, v = s.reshape(frames * nodes, -1), None
        for layer in self.layers:
            h, v = layer(h, v, src, dst, unit, edge_feat, self.inv_sqrt_deg)
        return h.view(frames, nodes, -1), v.view(frames, nodes, 3, -1)


def _topological_hops(n_atoms: int, bonds: np.ndarray, max_hops: int) -> np.ndarray:
    """Bond-count distance matrix [n, n] truncated at ``max_hops + 1``."""
    adj = np.zeros((n_atoms, n_atoms), dtype=bool)
    if len(bonds):
        adj[bonds[:, 0], bonds[:, 1]] = adj[bonds[:, 1], bonds[:, 0]] = True
    dist = np.full((n_atoms, n_atoms), max_hops + 1)
    reach = np.eye(n_atoms, dtype=bool)
    np.fill_diagonal(dist, 0)
    for hop in range(1, max_hops + 1):
        new = (reach.astype(np.int64) @ adj.astype(np.int64) > 0) & ~reach
        dist[new] = hop
        reach |= new
    return dist


class BackmapVAE(nn.Module):
    """CG -> all-atom VAE for one molecule type (see the module docstring for the maths).

    ``cg_map``: the :class:`CGMap`; ``bonds`` [n_bonds, 2]: the all-atom topology's bonds."""

    def __init__(self, cg_map: CGMap, bonds: np.ndarray, config: Optional[BackmapConfig] = None
                 ) -> None:
        super().__init__()
        cfg = config or BackmapConfig()
        self.config = cfg
        self.cg_map = cg_map
        bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
        if len(bonds) and (bonds.min() < 0 or bonds.max() >= cg_map.n_atoms):
            raise ValueError("bond indices out of range for the CG map's atoms")
        self.register_buffer("bonds", torch.as_tensor(bonds))
        n, nb, f = cg_map.n_atoms, cg_map.n_beads, cfg.features
        assign = cg_map.assignment
        slots = np.zeros(n, dtype=np.int64)
        for b in range(nb):
            slots[cg_map.atoms_of(b)] = np.arange(len(cg_map.atoms_of(b)))
        self.n_slots = int(slots.max()) + 1
        self.register_buffer("bead_of_atom", torch.as_tensor(assign))
        self.register_buffer("slot_of_atom", torch.as_tensor(slots))
        self.register_buffer("map_weights", torch.as_tensor(cg_map.weights(), dtype=torch.float32))
        fixed = np.zeros(n, dtype=bool)
        if cg_map.kind == "anchor":
            fixed[cg_map.anchors] = True
        self.register_buffer("anchor_atom", torch.as_tensor(fixed))
        type_names = sorted(set(cg_map.types))
        self.register_buffer("bead_type", torch.as_tensor([type_names.index(t) for t in cg_map.types]))

        # -- graphs -------------------------------------------------------------------------
        hops = _topological_hops(n, bonds, cfg.encoder_bond_hops)
        bead_adj = np.eye(nb, dtype=bool)
        for i, j in bonds:
            bead_adj[assign[i], assign[j]] = bead_adj[assign[j], assign[i]] = True
        aa_i, aa_j = np.nonzero((hops <= cfg.encoder_bond_hops) & ~np.eye(n, dtype=bool))
        if cfg.encoder_bead_links == "bonded":  # atom a -> bead b when b is a's bead or bonded to it
            ab_a, ab_b = np.nonzero(bead_adj[assign])
        elif cfg.encoder_bead_links == "own":
            ab_a, ab_b = np.arange(n), assign
        else:
            raise ValueError("encoder_bead_links must be 'own' or 'bonded'")
        bb_i, bb_j = np.nonzero(~np.eye(nb, dtype=bool))
        enc_src = np.concatenate([aa_j, ab_a, bb_j + n])
        enc_dst = np.concatenate([aa_i, ab_b + n, bb_i + n])
        enc_kind = np.concatenate([np.zeros(len(aa_i)), np.ones(len(ab_a)),
                                   np.full(len(bb_i), 2)]).astype(np.int64)
        # radial range: edges with an atom use atom_cutoff, bead-bead edges cg_cutoff
        self.encoder_net = _GraphNet(cfg, cfg.encoder_layers, enc_src, enc_dst, enc_kind, n + nb, 3,
                                     (cfg.atom_cutoff, cfg.cg_cutoff), (enc_kind == 2).astype(np.int64))
        if nb > 1:
            cg_src, cg_dst = bb_j, bb_i
        else:
            cg_src = cg_dst = np.zeros(0, dtype=np.int64)
        cg_kind = np.zeros(len(cg_src), dtype=np.int64)
        self.prior_net = _GraphNet(cfg, cfg.prior_layers, cg_src, cg_dst, cg_kind, nb, 1, (cfg.cg_cutoff,))
        self.decoder_net = _GraphNet(cfg, cfg.decoder_layers, cg_src, cg_dst, cg_kind, nb, 1,
                                     (cfg.cg_cutoff,))

        # -- embeddings and heads ---------------------------------------------------------
        self.atom_embed = nn.Embedding(n, f)
        self.enc_bead_embed = nn.Embedding(nb, f)
        self.type_embed = nn.Embedding(len(type_names), f)
        self.index_embed = nn.Embedding(nb, f)
        self.enc_head = _mlp(2 * f, f, 2 * cfg.latent_dim)
        self.prior_head = _mlp(f, f, 2 * cfg.latent_dim)
        self.dec_in = _mlp(f + cfg.latent_dim, f, f)
        self.coef_head = _mlp(f, f, self.n_slots * f)
        self.coef_static = nn.Parameter(torch.zeros(nb, self.n_slots, f))

    # -- pieces ------------------------------------------------------------------------------
    @property
    def n_atoms(self) -> int:
        return self.cg_map.n_atoms

    @property
    def n_beads(self) -> int:
        return self.cg_map.n_beads

    def cg(self, x: torch.Tensor) -> torch.Tensor:
        """Bead positions ``X = W x`` [F, n_beads, 3]."""
        return torch.einsum("ba,fac->fbc", self.map_weights.to(x.dtype), x)

    def _split(self, out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = out.chunk(2, dim=-1)
        return mu, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def _bead_features(self, frames: int) -> torch.Tensor:
        h = self.type_embed(self.bead_type) + self.index_embed.weight
        return h.expand(frames, -1, -1)

    def encode(self, x: torch.Tensor, X: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mu_q, logvar_q)`` [F, n_beads, latent_dim], invariant under E(3) (SO(3) if chiral)."""
        frames = x.shape[0]
        pos = torch.cat([x, X], dim=1)
        s = torch.cat([self.atom_embed.weight, self.enc_bead_embed.weight], 0).expand(frames, -1, -1)
        s, _ = self.encoder_net(pos, s)
        n = self.n_atoms
        atom_mean = torch.zeros_like(s[:, n:]).index_add(1, self.bead_of_atom, s[:, :n])
        counts = torch.bincount(self.bead_of_atom, minlength=self.n_beads).to(s.dtype)
        atom_mean = atom_mean / counts[None, :, None]
        return self._split(self.enc_head(torch.cat([s[:, n:], atom_mean], -1)))

    def prior(self, X: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mu_p, logvar_p)`` [F, n_beads, latent_dim] from the CG structure alone."""
        s, _ = self.prior_net(X, self._bead_features(X.shape[0]))
        return self._split(self.prior_head(s))

    def decode(self, z: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """All-atom positions [F, n_atoms, 3] (Å) for latents ``z`` and beads ``X``."""
        s0 = self.dec_in(torch.cat([self._bead_features(X.shape[0]), z], -1))
        s, v = self.decoder_net(X, s0)
        frames, nb, f = s.shape
        coef = self.coef_head(s).view(frames, nb, self.n_slots, f) + self.coef_static
        offsets = torch.einsum("nbcf,nbkf->nbkc", v, coef)
        o = offsets[:, self.bead_of_atom, self.slot_of_atom]  # [F, n_atoms, 3]
        if self.cg_map.kind == "anchor":
            o = o * (~self.anchor_atom).to(o.dtype)[None, :, None]
        else:  # make sum_a W_ba o_a = 0 so that W x = X exactly
            mean = torch.einsum("ba,fac->fbc", self.map_weights.to(o.dtype), o)
            o = o - mean[:, self.bead_of_atom]
        return X[:, self.bead_of_atom] + o

    # -- whole model -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, X: Optional[torch.Tensor] = None,
                sample_posterior: bool = True) -> Dict[str, torch.Tensor]:
        """Encode, draw ``z ~ q`` (or take its mean), decode; returns a dict of tensors."""
        X = self.cg(x) if X is None else X
        mu_q, logvar_q = self.encode(x, X)
        mu_p, logvar_p = self.prior(X)
        z = mu_q + torch.randn_like(mu_q) * torch.exp(0.5 * logvar_q) if sample_posterior else mu_q
        return {"x_recon": self.decode(z, X), "mu_q": mu_q, "logvar_q": logvar_q, "mu_p": mu_p,
                "logvar_p": logvar_p, "z": z, "X": X}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction with the posterior mean ``z = mu_q(x, X)``."""
        return self.forward(x, sample_posterior=False)["x_recon"]

    def sample_latent(self, X: torch.Tensor, n_samples: int = 1,
                      generator: Optional[torch.Generator] = None, temperature: float = 1.0
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(z, X_rep)``: ``n_samples`` prior draws per frame, frame-major [F*K, n_beads, ...]."""
        mu, logvar = self.prior(X)
        mu = mu.repeat_interleave(n_samples, 0)
        std = torch.exp(0.5 * logvar).repeat_interleave(n_samples, 0)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + temperature * std * eps, X.repeat_interleave(n_samples, 0)

    @torch.no_grad()
    def sample(self, X: torch.Tensor, n_samples: int = 1, generator: Optional[torch.Generator] = None,
               temperature: float = 1.0) -> torch.Tensor:
        """``n_samples`` all-atom structures per CG frame, [F*K, n_atoms, 3], frame-major."""
        z, X_rep = self.sample_latent(X, n_samples, generator, temperature)
        return self.decode(z, X_rep)
