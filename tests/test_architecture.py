"""Each family's architecture pinned against an implementation written independently of the package.

The model tests check physics (derivatives, symmetries, locality); these check that the network is
the one its docstring describes: a dropped or altered term (PaiNN's a_sv <Uv, Vv>, an EGNN edge
input, a tensor-product path) changes these numbers. Three pins:

- EGNN and PaiNN against short references written here with explicit pair lists (periodic images
  enumerated by brute force), the basis and envelope written out from their formulas;
- PaiNN against SchNetPack 2.0.4's ``PaiNN`` with our weights copied in (when schnetpack is
  installed; CI installs it);
- ``tp``: its reference path is e3nn's ``TensorProduct`` itself; the fused path is tested equal to it
  in ``test_layouts.py``.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from ase_eqgnn import keys
from ase_eqgnn.graph import AtomicGraph
from ase_eqgnn.models import build_model

CUTOFF = 3.6
SPECIES = [6, 8, 29]


def systems():
    cu = bulk("Cu", "fcc", a=3.6)  # one atom: every neighbour is a periodic image
    cu = cu.repeat((2, 1, 1))
    cu.numbers[1] = 8
    cu.rattle(0.25, seed=1)
    rng = np.random.default_rng(2)
    cluster = Atoms([6, 8, 29, 6, 6, 8, 29],
                    positions=rng.uniform(0, 4.0, (7, 3)) + np.arange(7)[:, None] * 0.3)
    return {"periodic": cu, "cluster": cluster}


def pairs(atoms, cutoff):
    """All (i, j, r_ij) within the cutoff, images by brute force: independent of the package."""
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(np.asarray(atoms.cell[:]))
    reach = [math.ceil(cutoff / (atoms.cell.volume / np.linalg.norm(np.cross(*np.delete(
        atoms.cell[:], d, 0))))) + 1 if atoms.pbc[d] else 0 for d in range(3)] \
        if atoms.pbc.any() else [0, 0, 0]
    out = []
    for shift in itertools.product(*[range(-r, r + 1) for r in reach]):
        offset = torch.tensor(shift, dtype=torch.float64) @ cell
        for i in range(len(atoms)):
            for j in range(len(atoms)):
                if i == j and not any(shift):
                    continue
                if torch.linalg.norm(pos[j] + offset - pos[i]) < cutoff:
                    out.append((i, j, offset))
    return out


def bessel(r, basis):
    """sqrt(2/r_c) sin(k π r / r_c) / r with the model's frequencies k π / r_c (its constants: a model
    built in float32 and cast keeps them at float32 precision)."""
    return math.sqrt(2 / basis.cutoff) * torch.sin(basis.freq * r) / r


def envelope(r, rc, p=6):
    x = r / rc
    return 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x**(p + 1) - p * (p + 1) / 2 * x**(p + 2)


def lin(layer, x):
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0.0)


def head_energy(model, h, species):
    hidden = torch.nn.functional.silu(lin(model.head[0], h))
    e = lin(model.head[2], hidden).squeeze(-1)
    return (model.scale * e + model.shift + model.E0[species]).sum()


def reference_energy(model, atoms, positions, representation):
    pos = positions
    species = torch.tensor([SPECIES.index(z) for z in atoms.numbers])
    edges = pairs(atoms, model.cutoff)
    vec = {k: pos[j] + off - pos[i] for k, (i, j, off) in enumerate(edges)}
    h = representation(model.representation, species, edges, vec, len(atoms))
    return head_energy(model, h, species)


# -------------------------------------------------------------------------------------------------
# EGNN (Satorras et al. 2021, as in models/egnn.py's docstring)
# -------------------------------------------------------------------------------------------------
def egnn_reference(rep, species, edges, vec, n):
    silu = torch.nn.functional.silu
    h = rep.embedding.embedding.weight[species]
    d = {k: torch.linalg.norm(v) for k, v in vec.items()}
    norm = rep.layers[0].norm  # 1 / sqrt(avg_num_neighbors)
    shift = torch.zeros(n, 3, dtype=h.dtype)  # coordinate updates, as displacements
    for k_layer, layer in enumerate(rep.layers):
        agg = torch.zeros_like(h)
        messages = {}
        for k, (i, j, _) in enumerate(edges):
            r_vec = vec[k] + shift[j] - shift[i]
            f = envelope(d[k], rep.envelope.cutoff, rep.envelope.p)
            rad = bessel(torch.linalg.norm(r_vec), rep.basis) * f
            pre = lin(layer.edge_src, h[i]) + lin(layer.edge_dst, h[j]) + lin(layer.edge_rad, rad)
            m = silu(lin(layer.edge_out[1], silu(pre))) * f
            messages[k] = (m, f, r_vec)
            agg = agg.index_add(0, torch.tensor([i]), m[None])
        update = torch.cat([h, agg * norm], dim=-1)
        new_h = h + lin(layer.phi_h[2], silu(lin(layer.phi_h[0], update)))
        if layer.phi_x is not None:
            move = torch.zeros(n, 3, dtype=h.dtype)
            for k, (i, j, _) in enumerate(edges):
                m, f, r_vec = messages[k]
                w = lin(layer.phi_x[2], silu(lin(layer.phi_x[0], m))) * f
                move = move.index_add(0, torch.tensor([i]), (-r_vec * w)[None])
            shift = shift + move * norm
        h = new_h
    return h


# -------------------------------------------------------------------------------------------------
# PaiNN (Schütt et al. 2021, as in models/painn.py's docstring)
# -------------------------------------------------------------------------------------------------
def painn_reference(rep, species, edges, vec, n):
    silu = torch.nn.functional.silu
    F = rep.features
    s = rep.embedding.embedding.weight[species]
    v = torch.zeros(n, 3, F, dtype=s.dtype)
    for msg, upd in zip(rep.messages, rep.updates):
        phi = lin(msg.phi[2], silu(lin(msg.phi[0], s)))
        ds, dv = torch.zeros_like(s), torch.zeros_like(v)
        for k, (i, j, _) in enumerate(edges):
            r = torch.linalg.norm(vec[k])
            w = lin(msg.filter, bessel(r, rep.basis)
                    * envelope(r, rep.envelope.cutoff, rep.envelope.p))
            x = phi[j] * w
            if msg.first:
                a, c = x[:F], x[F:]
                b = torch.zeros(F, dtype=s.dtype)
            else:
                a, b, c = x[:F], x[F:2 * F], x[2 * F:]
            ds = ds.index_add(0, torch.tensor([i]), a[None])
            term = b[None, :] * v[j] + c[None, :] * (vec[k] / r)[:, None]
            dv = dv.index_add(0, torch.tensor([i]), term[None])
        s, v = s + msg.norm * ds, v + msg.norm * dv
        uv = v @ upd.UV.weight.T
        Uv, Vv = uv[..., :F], uv[..., F:]
        norm_v = torch.sqrt((Vv**2).sum(1) + 1e-8)
        mixed = lin(upd.mix[2], silu(lin(upd.mix[0], torch.cat([s, norm_v], -1))))
        a_vv, a_sv, a_ss = mixed[:, :F], mixed[:, F:2 * F], mixed[:, 2 * F:]
        s = s + a_sv * (Uv * Vv).sum(1) + a_ss
        v = v + a_vv[:, None, :] * Uv
    return s


def make(name):
    torch.manual_seed(3)
    hp = {"egnn": dict(features=6, layers=2, n_radial=5),
          "egnn-coords": dict(features=6, layers=3, n_radial=5, coord_update=True),
          "painn": dict(features=6, layers=3, n_radial=5)}[name]
    model = build_model(name.split("-")[0], SPECIES, CUTOFF, **hp).double()
    with torch.no_grad():
        model.scale.fill_(1.4)
        model.shift.fill_(0.2)
        model.E0.normal_()
    return model


@pytest.mark.parametrize("layout", ["auto", "reference"])
@pytest.mark.parametrize("system", ["periodic", "cluster"])
@pytest.mark.parametrize("name", ["egnn", "egnn-coords", "painn"])
def test_family_equals_its_written_out_reference(name, system, layout):
    model, atoms = make(name), systems()[system]
    reference = egnn_reference if name.startswith("egnn") else painn_reference
    positions = torch.tensor(atoms.positions, requires_grad=True)
    e_ref = reference_energy(model, atoms, positions, reference)
    (f_ref,) = torch.autograd.grad(-e_ref, positions)
    graph = AtomicGraph.from_atoms(atoms).with_neighbors(model.cutoff)
    out = model(graph, forces=True, layout=layout)
    assert abs(float(out[keys.ENERGY][0]) - e_ref.item()) < 1e-10
    torch.testing.assert_close(out[keys.FORCES], f_ref, rtol=1e-9, atol=1e-10)
    assert f_ref.abs().max() > 1e-4


def test_dropping_a_painn_term_is_detected():
    """The pin has teeth: without a_sv <Uv, Vv> the written-out reference disagrees."""
    model, atoms = make("painn"), systems()["cluster"]
    with torch.no_grad():
        e_model = float(model(AtomicGraph.from_atoms(atoms).with_neighbors(CUTOFF),
                              forces=False)[keys.ENERGY][0])
        for upd in model.representation.updates:  # zero the rows that produce a_sv
            F = model.representation.features
            upd.mix[2].weight[F:2 * F] = 0.0
            upd.mix[2].bias[F:2 * F] = 0.0
        e_without = float(reference_energy(model, atoms, torch.tensor(atoms.positions),
                                           painn_reference))
    assert abs(e_model - e_without) > 1e-4


# -------------------------------------------------------------------------------------------------
# PaiNN against SchNetPack 2.0.4 with copied weights
# -------------------------------------------------------------------------------------------------
def _import_schnetpack():
    import typing

    import torch.utils.data.dataloader as dataloader

    if not hasattr(dataloader, "T_co"):  # schnetpack 2.0.4 imports a name recent torch dropped
        dataloader.T_co = typing.TypeVar("T_co", covariant=True)
    return pytest.importorskip("schnetpack", reason="SchNetPack 2.0.4 is not installed")


@pytest.mark.parametrize("layout", ["auto", "reference"])
@pytest.mark.parametrize("system", ["periodic", "cluster"])
def test_painn_equals_schnetpack_painn_with_copied_weights(system, layout):
    """SchNetPack's PaiNN (filter bias zero: ours has none; envelope as ours; Bessel basis without
    our sqrt(2/r_c), folded into the copied filter) gives our scalar features."""
    spk = _import_schnetpack()
    torch.manual_seed(4)
    F, L, n_rad = 8, 3, 6
    ours = build_model("painn", SPECIES, CUTOFF, features=F, layers=L, n_radial=n_rad,
                       avg_num_neighbors=1.0).double()  # SchNetPack sums without 1/sqrt(<n>)
    rep = ours.representation
    theirs = spk.representation.PaiNN(
        n_atom_basis=F, n_interactions=L, radial_basis=spk.nn.BesselRBF(n_rad, CUTOFF),
        cutoff_fn=rep.envelope, epsilon=1e-8).double()
    prefactor = math.sqrt(2 / CUTOFF)
    order_msg = lambda first: [slice(0, F), slice(F, 2 * F)] if first else \
        [slice(0, F), slice(2 * F, 3 * F), slice(F, 2 * F)]  # ours (a, [b,] c) = theirs (dq, [dmumu,] dmuR)
    with torch.no_grad():
        theirs.embedding.weight[torch.tensor(SPECIES)] = rep.embedding.embedding.weight
        theirs.filter_net.bias.zero_()
        for k, (msg, upd) in enumerate(zip(rep.messages, rep.updates)):
            rows = torch.cat([torch.arange(3 * F)[sl] for sl in order_msg(msg.first)]) + 3 * F * k
            theirs.filter_net.weight[rows] = msg.filter.weight * prefactor
            inter, mix = theirs.interactions[k], theirs.mixing[k]
            inter.interatomic_context_net[0].weight.copy_(msg.phi[0].weight)
            inter.interatomic_context_net[0].bias.copy_(msg.phi[0].bias)
            rows = torch.cat([torch.arange(3 * F)[sl] for sl in order_msg(msg.first)])
            inter.interatomic_context_net[1].weight[rows] = msg.phi[2].weight
            inter.interatomic_context_net[1].bias[rows] = msg.phi[2].bias
            # ours (U v, V v) = theirs (mu_W, mu_V); ours (a_vv, a_sv, a_ss) = theirs (dmu, dqmu, dq)
            mix.mu_channel_mix.weight.copy_(torch.cat([upd.UV.weight[F:], upd.UV.weight[:F]]))
            mix.intraatomic_context_net[0].weight.copy_(upd.mix[0].weight)
            mix.intraatomic_context_net[0].bias.copy_(upd.mix[0].bias)
            rows = torch.cat([torch.arange(F, 2 * F), torch.arange(2 * F, 3 * F), torch.arange(F)])
            mix.intraatomic_context_net[1].weight[rows] = upd.mix[2].weight
            mix.intraatomic_context_net[1].bias[rows] = upd.mix[2].bias
    atoms = systems()[system]
    graph = AtomicGraph.from_atoms(atoms).with_neighbors(CUTOFF)
    from ase_eqgnn.graph import edge_vectors

    vec = edge_vectors(graph.positions, graph.cell, graph.batch, graph.edge_index, graph.shifts)
    species = ours.species_index(graph.numbers)
    with torch.no_grad():
        got = rep(species, vec, ours.neighborhood(graph.edge_index, len(atoms), layout))
        inputs = {spk.properties.Z: graph.numbers, spk.properties.Rij: vec,
                  spk.properties.idx_i: graph.edge_index[0], spk.properties.idx_j: graph.edge_index[1]}
        want = theirs(inputs)["scalar_representation"]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert want.abs().max() > 0.1
