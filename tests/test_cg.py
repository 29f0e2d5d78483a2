"""Tests of the coarse-grain back-mapping module (ase_eqgnn.cg)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import mdtraj as md
import numpy as np
import pytest
import torch

from ase_eqgnn.cg import maps as cgmaps
from ase_eqgnn.cg.backmap import (BackMapper, evaluate_model, load_checkpoint, model_from_checkpoint,
                                  read_cg, save_checkpoint, write_all_atom)
from ase_eqgnn.checkpoint import CheckpointError, CheckpointWarning, payload_digest, write_checkpoint
from ase_eqgnn.cg.losses import GeometryTerms, angle_triplets, heavy_reconstruction_loss, kl_divergence
from ase_eqgnn.cg.metrics import (bond_graph, clash_mask, diversity, evaluate_backmapping,
                                  graph_edit_ratio, has_clash)
from ase_eqgnn.cg.model import BackmapConfig, BackmapVAE
from ase_eqgnn.structures import structure_path
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = BackmapConfig(features=16, latent_dim=4, encoder_layers=2, prior_layers=1, decoder_layers=2,
                      n_rbf=8)


@pytest.fixture(scope="module")
def ala2():
    traj = md.load(str(ROOT / "training/data/ala2_test.h5"))
    top = traj.topology
    bonds = np.array([[a.index, b.index] for a, b in top.bonds])
    elements = [a.element.symbol for a in top.atoms]
    return traj.xyz.astype(np.float64) * 10.0, top, bonds, elements


def _rotation(seed: int) -> torch.Tensor:
    q = torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a, b, c, d = q / q.norm()
    return torch.stack([torch.stack([a*a+b*b-c*c-d*d, 2*(b*c-a*d), 2*(b*d+a*c)]),
                        torch.stack([2*(b*c+a*d), a*a-b*b+c*c-d*d, 2*(c*d-a*b)]),
                        torch.stack([2*(b*d-a*c), 2*(c*d+a*b), a*a-b*b-c*c+d*d])])


def _model(ala2, **kw):
    _, top, bonds, _ = ala2
    torch.manual_seed(0)
    cfg = BackmapConfig(**{**SMALL.to_dict(), **kw})
    return BackmapVAE(cgmaps.ala2_five_bead_map(top), bonds, cfg).double().eval()


# -- maps ---------------------------------------------------------------------------------------
def test_ala2_map_matches_brief():
    top = md.load(str(structure_path("ala2"))).topology
    m = cgmaps.ala2_five_bead_map(top)
    expected = [  # the brief's list; the NME methyl carbon is called "C" in the bundled PDB
        {"ACE:CH3", "ACE:H1", "ACE:H2", "ACE:H3", "ACE:C", "ACE:O"},
        {"ALA:N", "ALA:H"},
        {"ALA:CA", "ALA:HA", "ALA:CB", "ALA:HB1", "ALA:HB2", "ALA:HB3"},
        {"ALA:C", "ALA:O"},
        {"NME:N", "NME:H", "NME:C", "NME:H1", "NME:H2", "NME:H3"},
    ]
    got = [{f"{top.atom(i).residue.name}:{top.atom(i).name}" for i in m.atoms_of(b)} for b in range(5)]
    assert got == expected
    anchors = [f"{top.atom(i).residue.name}:{top.atom(i).name}" for i in m.anchors]
    assert anchors == ["ACE:C", "ALA:N", "ALA:CA", "ALA:C", "NME:N"]
    assert m.kind == "anchor" and cgmaps.CGMap.from_json(m.to_json()) == m


def test_bead_positions_com_cog_anchor():
    top = md.load(str(structure_path("ala2"))).topology
    xyz = np.random.default_rng(0).normal(size=(3, top.n_atoms, 3))
    masses = np.array([a.element.mass for a in top.atoms])
    com = cgmaps.residue_map(top, "com").bead_positions(xyz)
    cog = cgmaps.residue_map(top, "cog").bead_positions(xyz)
    for r, res in enumerate(top.residues):
        idx = [a.index for a in res.atoms]
        np.testing.assert_allclose(cog[:, r], xyz[:, idx].mean(1))
        np.testing.assert_allclose(com[:, r], (xyz[:, idx] * masses[idx, None]).sum(1) / masses[idx].sum())
    ca = cgmaps.ca_map(top)
    assert ca.n_beads == 1 and ca.n_atoms == 22  # caps join the only CA bead
    np.testing.assert_allclose(ca.bead_positions(xyz)[:, 0], xyz[:, 8])
    anchor = cgmaps.ala2_five_bead_map(top).bead_positions(torch.tensor(xyz))
    np.testing.assert_allclose(anchor.numpy(), xyz[:, [4, 6, 8, 10, 16]])
    groups = cgmaps.named_atoms_map(top, [list(range(11)), list(range(11, 22))])
    np.testing.assert_allclose(groups.bead_positions(xyz)[:, 1], xyz[:, 11:].mean(1))


def test_map_errors():
    top = md.load(str(structure_path("ala2"))).topology
    with pytest.raises(ValueError):
        cgmaps.named_atoms_map(top, [[0, 1], [1, 2]])  # atom in two beads
    with pytest.raises(ValueError):
        cgmaps.CGMap(np.array([0, 0, 2]))  # empty bead 1
    with pytest.raises(ValueError):
        cgmaps.build_map("nonsense", top)


# -- model symmetries ---------------------------------------------------------------------------
def test_decoder_and_sampling_equivariant_float64(ala2):
    xyz = torch.tensor(ala2[0][:4])
    model = _model(ala2)
    X = model.cg(xyz)
    R, t = _rotation(1), torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64)
    z = torch.randn(4, 5, SMALL.latent_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y, y_rot = model.decode(z, X), model.decode(z, X @ R.T + t)
    assert torch.allclose(y @ R.T + t, y_rot, atol=1e-6)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s, s_rot = model.sample(X, 3, g1), model.sample(X @ R.T + t, 3, g2)
    assert torch.allclose(s @ R.T + t, s_rot, atol=1e-6)
    mu, _ = model.encode(xyz, X)
    mu_rot, _ = model.encode(xyz @ R.T + t, X @ R.T + t)
    assert torch.allclose(mu, mu_rot, atol=1e-6)
    rec, rec_rot = model.reconstruct(xyz), model.reconstruct(xyz @ R.T + t)
    assert torch.allclose(rec @ R.T + t, rec_rot, atol=1e-6)
    assert torch.allclose(model.cg(y), X, atol=1e-12)  # anchors land exactly on the beads


def test_chirality(ala2):
    xyz = torch.tensor(ala2[0][:3])
    mirror = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64))
    z = torch.randn(3, 5, SMALL.latent_dim, dtype=torch.float64)
    chiral = _model(ala2)
    X = chiral.cg(xyz)
    assert (chiral.decode(z, X) @ mirror - chiral.decode(z, X @ mirror)).abs().max() > 1e-4
    achiral = _model(ala2, mirror_equivariant=True)
    assert torch.allclose(achiral.decode(z, X) @ mirror, achiral.decode(z, X @ mirror), atol=1e-6)


def test_frame_permutation(ala2):
    xyz = torch.tensor(ala2[0][:5])
    model = _model(ala2)
    perm = torch.tensor([3, 0, 4, 1, 2])
    X = model.cg(xyz)
    z = torch.randn(5, 5, SMALL.latent_dim, dtype=torch.float64)
    assert torch.allclose(model.decode(z, X)[perm], model.decode(z[perm], X[perm]), atol=1e-12)
    assert torch.allclose(model.reconstruct(xyz)[perm], model.reconstruct(xyz[perm]), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_residue_map(dtype):
    traj = md.load(str(ROOT / "training/data/chignolin_test.h5"))[:2]
    top = traj.topology
    bonds = np.array([[a.index, b.index] for a, b in top.bonds])
    model = BackmapVAE(cgmaps.residue_map(top), bonds, SMALL).to(dtype)
    x = torch.tensor(traj.xyz * 10.0, dtype=dtype)
    out = model(x)
    assert out["x_recon"].dtype == dtype and out["x_recon"].shape == x.shape
    assert torch.allclose(model.cg(out["x_recon"]), out["X"], atol=1e-4)  # cog projection


# -- losses and metrics -------------------------------------------------------------------------
def test_losses_zero_on_reference(ala2):
    xyz, _, bonds, elements = ala2
    x = torch.tensor(xyz[:3])
    g = GeometryTerms(elements, bonds)(x, x, 2.2)
    assert float(g["bond"]) == 0 and float(g["angle"]) < 1e-10 and float(g["steric"]) == 0
    mu, lv = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    assert abs(float(kl_divergence(mu, lv, mu, lv))) < 1e-6
    assert len(angle_triplets(22, bonds)) == 36


def test_metrics_hand_made(ala2):
    xyz, _, bonds, elements = ala2
    ref = xyz[:4]
    perfect = evaluate_backmapping(ref[:, None], ref, elements, bonds)
    assert perfect["rmsd"] == 0 and perfect["heavy_rmsd"] == 0
    assert perfect["graph_edit_ratio"] == 0 and perfect["valid_ratio"] == 1
    assert perfect["clash_ratio"] == 0
    broken = ref.copy()
    cb_group = [12, 13, 14, 15]  # CB and its hydrogens move together: only CA-CB breaks
    broken[:, cb_group] += 1.5 * (ref[:, 12:13] - ref[:, 8:9]) / np.linalg.norm(
        ref[:, 12:13] - ref[:, 8:9], axis=-1, keepdims=True)
    m = evaluate_backmapping(broken[:, None], ref, elements, bonds)
    assert m["valid_ratio"] == 0 and m["heavy_valid_ratio"] == 0
    adj, ref_adj = bond_graph(broken, elements), bond_graph(ref, elements)
    np.testing.assert_allclose(graph_edit_ratio(adj, ref_adj), 2 / ref_adj.sum((-1, -2)))
    assert m["heavy_graph_edit_ratio"] > 0 and m["rmsd"] > 0
    clashed = ref.copy()
    clashed[:, 18] = clashed[:, 0] + np.array([1.5, 0, 0])  # NME C onto ACE CH3 (far in the graph)
    pairs = clash_mask(elements, bonds)
    assert pairs[0, 18] and has_clash(clashed, pairs).all() and not has_clash(ref, pairs).any()
    assert evaluate_backmapping(clashed[:, None], ref, elements, bonds)["clash_ratio"] == 1
    shifted = ref[:, None] + np.array([[0.0, 0, 0], [0.1, 0, 0]])[None, :, None]
    assert np.isclose(diversity(shifted, ref), 2.0)  # pairwise 0.1 Å / mean(0, 0.1 Å)


# -- checkpoints, input checks, I/O -------------------------------------------------------------
def _mapper(ala2, tmp_path):
    xyz, top, bonds, elements = ala2
    model = _model(ala2).float()
    from ase_eqgnn.cg.backmap import bead_distance_stats
    meta = {"elements": elements, "bonds": bonds.tolist(),
            "bead_stats": bead_distance_stats(model.cg_map, bonds, model.cg_map.bead_positions(xyz))}
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, top, meta)
    return model, path


def test_checkpoint_round_trip_and_errors(ala2, tmp_path):
    model, path = _mapper(ala2, tmp_path)
    ckpt = torch.load(path, weights_only=True)  # plain data only
    assert isinstance(ckpt["cg_map"], str) and isinstance(ckpt["topology_pdb"], str)
    assert ckpt["version"] == 2 and ckpt["sha256"] == payload_digest(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a current file loads without any warning
        loaded, meta = model_from_checkpoint(load_checkpoint(path))
    x = torch.tensor(ala2[0][:3], dtype=torch.float32)
    assert torch.allclose(loaded.reconstruct(x), model.reconstruct(x), atol=1e-6)
    mapper = BackMapper.load(path)
    assert [a.name for a in mapper.topology.atoms] == [a.name for a in ala2[1].atoms]
    assert mapper.topology.n_bonds == ala2[1].n_bonds
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt.pt.*truncated, corrupt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an ase_eqgnn back-mapping"):
        load_checkpoint(foreign)
    potential = tmp_path / "potential.pt"
    from ase_eqgnn import build_model, save_model
    save_model(build_model("egnn", ["H"], 3.0, features=4, layers=1), potential)
    with pytest.raises(CheckpointError, match="not an ase_eqgnn back-mapping"):
        BackMapper.load(potential)
    with pytest.raises(ValueError, match="does not exist"):
        BackMapper.load(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing.pt.*does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def _reseal(path, target, edit, seal=True):
    """A copy of back-mapping file ``path`` changed by ``edit(dict)``, re-sealed as a forger would
    (``seal=False``: the old digest is kept)."""
    raw = torch.load(path, weights_only=True)
    edit(raw)
    if seal:
        write_checkpoint(raw, target)
    else:
        torch.save(raw, target)
    return target


def _json_edit(key, fn):
    def edit(raw):
        data = json.loads(raw[key])
        fn(data)
        raw[key] = json.dumps(data)
    return edit


def test_checkpoint_flipped_bytes_and_edits_are_detected(ala2, tmp_path):
    model, path = _mapper(ala2, tmp_path)
    data = bytearray(path.read_bytes())
    weight = model.state_dict()["coef_head.0.weight"]  # 16 x 16 float32: 1 kB
    start = data.find(weight.numpy().tobytes())
    assert start > 0
    for k in range(start + 256, start + 320):  # 64 bytes inside the weights
        data[k] ^= 0xFF
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    assert not torch.equal(torch.load(damaged, weights_only=True)["model_state"]["coef_head.0.weight"],
                           weight)  # torch reads it without complaint
    with pytest.raises(CheckpointError, match="damaged.pt.*SHA-256 digest"):
        BackMapper.load(damaged)
    # entries outside the weights are covered too: the text, and a trainer's extra state
    edited = _reseal(path, tmp_path / "edited.pt",
                     _json_edit("meta", lambda m: m.update(elements=["H"] * 22)), seal=False)
    with pytest.raises(CheckpointError, match="edited.pt.*digest"):
        load_checkpoint(edited)
    save_checkpoint(tmp_path / "last.pt", model, ala2[1], json.loads(torch.load(
        path, weights_only=True)["meta"]), extra={"optimizer": torch.optim.AdamW(
            model.parameters()).state_dict(), "rng_torch": torch.get_rng_state(), "epoch": 3})
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 3
    stale = _reseal(tmp_path / "last.pt", tmp_path / "stale.pt",
                    lambda raw: raw.update(rng_torch=raw["rng_torch"].flip(0)), seal=False)
    with pytest.raises(CheckpointError, match="stale.pt.*digest"):
        load_checkpoint(stale)
    stripped = _reseal(path, tmp_path / "stripped.pt", lambda raw: raw.pop("sha256"), seal=False)
    with pytest.raises(CheckpointError, match="stripped.pt.*no valid integrity digest"):
        load_checkpoint(stripped)


def test_checkpoint_of_the_old_format_loads_with_one_warning(ala2, tmp_path):
    """Version 1 (before the digest): the old layout, written by hand."""
    model, path = _mapper(ala2, tmp_path)
    raw = torch.load(path, weights_only=True)
    old = {k: raw[k] for k in ("format", "model_config", "cg_map", "topology_pdb", "meta",
                               "model_state")}
    old["version"] = 1
    torch.save(old, tmp_path / "old.pt")
    with pytest.warns(CheckpointWarning) as record:
        mapper = BackMapper.load(tmp_path / "old.pt")
    assert len(record) == 1 and "old.pt" in str(record[0].message)
    assert "no integrity digest" in str(record[0].message)
    x = np.asarray(ala2[0][:2])
    np.testing.assert_array_equal(mapper.reconstruct(x), BackMapper.load(path).reconstruct(x))


@pytest.fixture
def vae_builds(monkeypatch):
    """Records, for every BackmapVAE built while loading, where its tensors would be allocated."""
    import ase_eqgnn.cg.backmap as backmap

    calls = []

    class Spy(BackmapVAE):
        def __init__(self, *args, **kwargs):
            calls.append(torch.empty(1).device.type)  # "meta" inside the shape probe
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(backmap, "BackmapVAE", Spy)
    return calls


@pytest.mark.parametrize("change, message", [
    ({"features": 6000}, "features must be an integer in"), ({"features": 10**9}, "features"),
    ({"n_rbf": 0}, "n_rbf"), ({"atom_cutoff": float("nan")}, "atom_cutoff"),
    ({"cg_cutoff": 1e9}, "cg_cutoff"), ({"cg_cutoff": 10**400}, "cg_cutoff"),
    ({"latent_dim": "16"}, "latent_dim"),
    ({"logvar_min": 10.0}, "logvar_min"), ({"encoder_bead_links": "all"}, "encoder_bead_links"),
    ({"decoder_layers": 10**6}, "decoder_layers"), ({"dropout": 0.1}, "unknown model config keys")])
def test_checkpoint_config_out_of_bounds_is_refused_before_building(ala2, tmp_path, vae_builds,
                                                                     change, message):
    _, path = _mapper(ala2, tmp_path)
    tampered = _reseal(path, tmp_path / "tampered.pt",
                       _json_edit("model_config", lambda c: c.update(change)))
    with pytest.raises(CheckpointError, match=f"tampered.pt.*{message}"):
        BackMapper.load(tampered)
    assert vae_builds == []


def test_checkpoint_config_that_disagrees_with_the_weights_is_caught_on_meta(ala2, tmp_path, vae_builds):
    _, path = _mapper(ala2, tmp_path)  # features 16
    tampered = _reseal(path, tmp_path / "tampered.pt",
                       _json_edit("model_config", lambda c: c.update(features=64)))
    with pytest.raises(CheckpointError, match="tampered.pt.*shape .* the config implies"):
        BackMapper.load(tampered)
    assert vae_builds == ["meta"]  # only the shape probe ran, which allocates nothing
    vae_builds.clear()
    huge = _reseal(path, tmp_path / "huge.pt", _json_edit("model_config", lambda c: c.update(
        features=1024, decoder_layers=32)))  # each within its bounds, too large as a whole
    with pytest.raises(CheckpointError, match="huge.pt.*more than the 50,000,000"):
        BackMapper.load(huge)
    assert vae_builds == ["meta"]


@pytest.mark.parametrize("key, edit, message", [
    ("cg_map", lambda m: m.update(assignment=list(range(2001))), "1 to 2000 atoms"),
    ("cg_map", lambda m: m.update(assignment=[0] * 22), "anchors"),
    ("cg_map", lambda m: m.update(kind="blob"), "kind"),
    ("meta", lambda m: m.update(bonds=[[0, 99]]), "bonds"),
    ("meta", lambda m: m.update(elements=["C"] * 3), "elements"),
    ("meta", lambda m: m["bead_stats"].update(pairs=[[0, 17]] * len(m["bead_stats"]["pairs"])),
     "bead_stats"),
    ("meta", lambda m: m["bead_stats"].update(std=[float("nan")] * len(m["bead_stats"]["std"])),
     "bead_stats")])
def test_checkpoint_with_an_impossible_map_or_metadata_is_refused(ala2, tmp_path, key, edit, message):
    _, path = _mapper(ala2, tmp_path)
    tampered = _reseal(path, tmp_path / "tampered.pt", _json_edit(key, edit))
    with pytest.raises(CheckpointError, match=f"tampered.pt.*({message})"):
        BackMapper.load(tampered)


def test_checkpoint_non_finite_weights_and_foreign_topology_are_refused(ala2, tmp_path):
    _, path = _mapper(ala2, tmp_path)

    def poison(raw):
        state = dict(raw["model_state"])
        state["prior_head.2.bias"] = state["prior_head.2.bias"].clone()
        state["prior_head.2.bias"][0] = float("nan")
        raw["model_state"] = state

    nan = _reseal(path, tmp_path / "nan.pt", poison)
    with pytest.raises(CheckpointError, match="nan.pt.*prior_head.2.bias.*NaN or infinite"):
        BackMapper.load(nan)
    water = md.Topology()
    water.add_atom("O", md.element.oxygen, water.add_residue("HOH", water.add_chain()))
    from ase_eqgnn.cg.backmap import topology_to_pdb_string
    other = _reseal(path, tmp_path / "other.pt",
                    lambda raw: raw.update(topology_pdb=topology_to_pdb_string(water)))
    with pytest.raises(CheckpointError, match="other.pt.*topology has 1 atoms, its CG map 22"):
        BackMapper.load(other)


def test_bead_mismatch_errors(ala2, tmp_path):
    _, path = _mapper(ala2, tmp_path)
    mapper = BackMapper.load(path)
    cg = mapper.cg_map.bead_positions(ala2[0][:3])
    with pytest.raises(ValueError, match="4 beads"):
        mapper.backmap(cg[:, :4])
    with pytest.raises(ValueError, match="bead distances"):
        mapper.backmap(cg[:, [2, 0, 4, 1, 3]])  # wrong order
    with pytest.raises(ValueError, match="bead distances"):
        mapper.backmap(cg / 10.0)  # nm instead of Å
    with pytest.raises(ValueError, match="order"):
        mapper.backmap(cg, bead_names=list(reversed(mapper.cg_map.names)))
    out = mapper.backmap(cg, samples=2, seed=1)
    assert out.shape == (6, 22, 3)
    np.testing.assert_allclose(out, mapper.backmap(cg, samples=2, seed=1))


def test_readers_and_writers(ala2, tmp_path):
    xyz, top, _, _ = ala2
    cg = cgmaps.ala2_five_bead_map(top).bead_positions(xyz[:2])
    np.save(tmp_path / "cg.npy", cg)
    np.testing.assert_allclose(read_cg(tmp_path / "cg.npy")[0], cg)
    lines = []
    for frame in cg:
        lines += ["5", "cg"] + [f"B{i} {x:.6f} {y:.6f} {z:.6f}" for i, (x, y, z) in enumerate(frame)]
    (tmp_path / "cg.xyz").write_text("\n".join(lines) + "\n")
    np.testing.assert_allclose(read_cg(tmp_path / "cg.xyz")[0], cg, atol=1e-6)
    for ext in (".pdb", ".dcd", ".xtc", ".h5"):
        write_all_atom(tmp_path / f"aa{ext}", xyz[:2], top)
        kw = {"top": str(structure_path("ala2"))} if ext in (".dcd", ".xtc") else {}
        back = md.load(str(tmp_path / f"aa{ext}"), **kw)
        np.testing.assert_allclose(back.xyz * 10, xyz[:2], atol=0.02)
    with pytest.raises(ValueError, match="extension"):
        write_all_atom(tmp_path / "aa.txt", xyz[:2], top)


def test_sample_heavy_loss_only_counts_heavy_atoms(ala2):
    xyz, _, bonds, elements = ala2
    geom = GeometryTerms(elements, bonds)
    x = torch.tensor(xyz[:2])
    moved = x.clone()
    hydrogens = torch.tensor([e == "H" for e in elements])
    moved[:, hydrogens] += 0.5
    assert float(heavy_reconstruction_loss(moved, x, geom.heavy)) == 0.0
    moved[:, ~hydrogens] += 0.1
    assert abs(float(heavy_reconstruction_loss(moved, x, geom.heavy)) - 0.03) < 1e-9


# -- the bundled model ----------------------------------------------------------------------------
def _bundled_or_skip():
    from ase_eqgnn.pretrained import list_pretrained

    if not any(e["name"] == "ala2" for e in list_pretrained("backmap")):
        pytest.skip("bundled ala2 back-mapping model not built (training/train_backmap_ala2.py)")


@pytest.mark.slow
def test_cli_backmap_bundled_ala2(ala2, tmp_path):
    _bundled_or_skip()
    xyz, top, _, _ = ala2
    cg = cgmaps.ala2_five_bead_map(top).bead_positions(xyz[:4])
    np.save(tmp_path / "cg.npy", cg)
    out = tmp_path / "aa.pdb"
    res = subprocess.run([sys.executable, "-m", "ase_eqgnn.cli.backmap", "--model", "ala2", "--cg",
                          str(tmp_path / "cg.npy"), "--out", str(out), "--samples", "2", "--seed", "0",
                          "--no-progress"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "bond-graph validity" in res.stdout
    traj = md.load(str(out))
    assert traj.n_frames == 8 and traj.n_atoms == 22
    bad = tmp_path / "bad.npy"
    np.save(bad, cg[:, :4])
    res = subprocess.run([sys.executable, "-m", "ase_eqgnn.cli.backmap", "--model", "ala2", "--cg",
                          str(bad), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "4 beads" in res.stderr


def test_bundled_ala2_metrics_on_held_out_frames(ala2):
    _bundled_or_skip()
    mapper = BackMapper.load("ala2")
    m = evaluate_model(mapper, ala2[0][::50][:10], samples=3, seed=0)
    # bounds a little looser than measured on all 500 test frames (see the registry entry)
    assert m["recon_rmsd"] < BOUNDS["recon_rmsd"]
    assert m["sample_heavy_rmsd"] < BOUNDS["sample_heavy_rmsd"]
    assert m["sample_heavy_valid_ratio"] >= BOUNDS["sample_heavy_valid_ratio"]
    assert m["sample_clash_ratio"] <= BOUNDS["sample_clash_ratio"]


# measured on all 500 test frames x 5 samples: recon 0.097 Å, sample heavy 0.128 Å, heavy-graph
# valid 1.0, clash 0.0; on the 10 frames x 3 samples above: 0.098, 0.129, 1.0, 0.0. The bounds are the
# issue's targets (recon and sample heavy RMSD <= 0.15 Å, valid >= 0.95, clash <= 0.01).
BOUNDS = {"recon_rmsd": 0.15, "sample_heavy_rmsd": 0.15, "sample_heavy_valid_ratio": 0.95,
          "sample_clash_ratio": 0.01}
