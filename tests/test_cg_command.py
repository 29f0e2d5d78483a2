"""eqgnn-cg: all-atom trajectory -> CG potential -> CG MD -> back-mapped all-atom trajectory."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import mdtraj as md
import numpy as np

from ase_eqgnn.cg import ramachandran as rama
from ase_eqgnn.cg.backmap import BackMapper
from ase_eqgnn.cg.maps import ala2_five_bead_map
from ase_eqgnn.cg.potential import CGPotential
from ase_eqgnn.checkpoint import load_model
from ase_eqgnn.cli.cg import main

ROOT = Path(__file__).resolve().parents[1]
TRAJ = ROOT / "training/data/ala2_test.h5"
BASE = [str(TRAJ), "--energies", str(TRAJ.with_suffix(".npz")), "--no-progress", "--features", "8",
        "--layers", "1"]


def test_eqgnn_cg_end_to_end_on_a_small_budget(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(BASE + ["--epochs", "2", "--md-steps", "120", "--interval", "20", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    model = load_model(out / "cg_model.pt")
    assert isinstance(model, CGPotential) and model.temperature_K == 300.0
    beads = ase.io.read(out / "cg.traj", ":")
    assert len(beads) == 6 and all(b.numbers.tolist() == [1, 2, 3, 4, 5] for b in beads)
    np.testing.assert_allclose(beads[0].get_masses(), model.beads.masses)
    aa = md.load(str(out / "all_atom.pdb"))
    assert aa.n_frames == 6 and aa.n_atoms == 22
    # the back-mapped structures are mapped back onto the CG frames' beads (anchor atoms)
    anchors = model.cg_map.anchors
    np.testing.assert_allclose(aa.xyz[:, anchors] * 10, [b.positions for b in beads], atol=0.6)
    report = json.loads((out / "report.json").read_text())
    assert report["cg_md"]["steps"] == 120 and report["cg_md"]["frames"] == 6
    assert report["training"]["epochs"] == 2 and report["training"]["valid_forces_mae_meV_per_A"] > 0
    assert 0 <= report["backmapping"]["valid_ratio"] <= 1
    phi, psi = rama.bead_phi_psi(np.array([b.positions for b in beads]))
    assert report["fes"]["populations"] == rama.populations(phi, psi)
    assert (out / "rama.png").stat().st_size > 0 and (out / "train/best.pt").exists()


def test_eqgnn_cg_trains_its_own_backmapper_and_uses_it(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(BASE + ["--epochs", "1", "--md-steps", "60", "--interval", "20", "--backmapper", "train",
                      "--backmap-epochs", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    best = out / "backmap" / "best.pt"
    report = json.loads((out / "report.json").read_text())
    assert report["backmapping"]["backmapper"] == str(best)
    assert report["backmapping"]["trained"]["epochs"] == 1
    mapper = BackMapper.load(best)
    assert mapper.meta["training_data"] == [str(TRAJ)]
    # the all-atom output is this back-mapper's sampling of the CG frames (seed 0), not the bundled one's
    beads = np.array([b.positions for b in ase.io.read(out / "cg.traj", ":")])
    aa = md.load(str(out / "all_atom.pdb")).xyz * 10
    np.testing.assert_allclose(aa, mapper.backmap(beads, seed=0), atol=2e-3)
    assert np.abs(aa - BackMapper.load("ala2").backmap(beads, seed=0)).max() > 0.05


def test_eqgnn_cg_user_errors_write_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text("keep me")
    cases = {"another CG map": ["--map", "residue"],       # 3 beads; the bundled back-mapper has 5
             "unknown CG map": ["--map", "martini"],
             "no bundled backmap": ["--backmapper", "nothing"],
             "all-atom trajectory extension": ["--all-atom", str(tmp_path / "aa.mp4")],
             "--backmap-time need --backmapper train": ["--backmap-time", "60"],
             "--backmapper train needs a named --map": ["--backmapper", "train", "--map",
                                                        str(tmp_path / "map.json")]}
    (tmp_path / "map.json").write_text(ala2_five_bead_map(md.load_topology(str(TRAJ))).to_json())
    for needle, extra in cases.items():
        rc = main(BASE + ["--epochs", "1", "--md-steps", "20", "--out", str(out)] + extra)
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("eqgnn-cg: error:") and err.count("\n") == 1, err
        assert needle in err, err
        assert sorted(p.name for p in out.iterdir()) == ["report.json"]
        assert (out / "report.json").read_text() == "keep me"
    # the back-mapping trainer reads mdtraj formats only: an npz of frames is refused up front
    rc = main([str(TRAJ.with_suffix(".npz")), "--no-progress", "--backmapper", "train", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("eqgnn-cg: error: --backmapper train:") and err.count("\n") == 1, err
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
