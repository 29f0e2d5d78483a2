"""EqGNNMLIAP without LAMMPS: a fake ML-IAP ``data`` object built from ASE's neighbour list, with
ghost atoms made by replicating periodic images, against EqGNNCalculator (float64, 1e-10).

The fake does what LAMMPS's ``pair_style mliap unified FILE 1`` does: local atoms first, then
ghost atoms (periodic images within a shell of layers x cutoff of some local atom), a full pair
list over local and ghost atoms (ghost atoms at the shell's edge get truncated lists), and
``update_pair_forces`` adding fij to atom i, subtracting it from atom j and tallying the virial
-rij (x) fij; ghost forces are then folded onto their owners, as LAMMPS's reverse communication does.
"""

import pickle
import pickletools
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from ase_eqgnn import EqGNNCalculator
from ase_eqgnn.lammps import EqGNNMLIAP, export_mliap
from ase_eqgnn.lammps import export as export_module
from ase_eqgnn.lammps import mliap as mliap_module
from ase_eqgnn.lammps import model as model_module
from ase_eqgnn.lammps.halo import INPUT_LINES as HALO_LINES
from ase_eqgnn.models import MODEL_NAMES, build_model

SPECIES = ["Cu", "Ni"]
SMALL = {"egnn": dict(features=8, layers=2), "painn": dict(features=8, layers=2),
         "tp": dict(features=4, l_max=1, layers=2, radial_hidden=8)}


def small_model(name, cutoff=3.2, **extra):
    torch.manual_seed(7)
    hparams = {**SMALL.get(name, dict(layers=2)), **extra}
    return build_model(name, SPECIES, cutoff, **hparams).double()


class FakeData:
    """The attributes of LAMMPS's MLIAPDataPy that EqGNNMLIAP reads, and the two it writes."""

    def __init__(self, atoms, element_types, shell, cutoff):
        n = len(atoms)
        positions, owner = atoms.positions, np.arange(n)
        if atoms.pbc.any():
            i, j, shift = neighbor_list("ijS", atoms, shell)
            images = np.unique(np.column_stack([j, shift])[shift.any(axis=1)], axis=0)
            ghost_pos = positions[images[:, 0]] + images[:, 1:] @ atoms.cell[:]
            positions = np.vstack([positions, ghost_pos])
            owner = np.concatenate([owner, images[:, 0]])
        everything = Atoms(positions=positions, pbc=False)
        pair_i, pair_j, rij = neighbor_list("ijD", everything, cutoff)
        self.set_arrays(atoms, element_types, owner, n, np.arange(len(positions)), pair_i, pair_j,
                        rij)

    def set_arrays(self, atoms, element_types, owner, nlocal, iatoms, pair_i, pair_j, rij):
        """Atom k of ``data`` is a copy of atom ``owner[k]`` of ``atoms``; the first nlocal are local."""
        symbols = np.array(atoms.get_chemical_symbols())[owner]
        self.owner = owner
        self.nlocal = self.nlistatoms = nlocal
        self.ntotal = len(owner)
        self.iatoms = np.asarray(iatoms, dtype=np.int32)
        self.elems = np.array([element_types.index(s) for s in symbols], dtype=np.int32)
        self.pair_i, self.pair_j = pair_i.astype(np.int32), pair_j.astype(np.int32)
        self.rij = np.ascontiguousarray(rij)
        self.npairs = len(pair_i)
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros((3, 3))
        self.eatoms = None
        self.energy = None

    def update_pair_forces(self, fij):
        assert fij.dtype == np.float64 and fij.flags.c_contiguous and fij.shape == (self.npairs, 3)
        np.add.at(self.f, self.pair_i, fij)
        np.subtract.at(self.f, self.pair_j, fij)
        self.virial -= self.rij.T @ fij

    def folded_forces(self):
        out = np.zeros((self.nlocal, 3))
        np.add.at(out, self.owner, self.f)
        return out


def periodic_system():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)  # 3.6 Å cell < the 6.4 Å ghost shell
    atoms.symbols[[1, 3]] = "Ni"
    atoms.rattle(0.15, seed=3)
    return atoms


def open_system():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    atoms.symbols[::3] = "Ni"
    atoms.rattle(0.15, seed=4)
    atoms.pbc = False
    return atoms


def reference(model, atoms):
    calc = EqGNNCalculator(model, dtype="float64", keep_freed_memory=False)
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
           "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["virial"] = -atoms.get_stress(voigt=False) * atoms.get_volume()
    return out


def evaluate(unified, atoms, shell):
    data = FakeData(atoms, unified.element_types, shell, 2 * unified.rcutfac)
    unified.compute_descriptors(data)
    unified.compute_gradients(data)
    unified.compute_forces(data)
    return data


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("system", [periodic_system, open_system])
def test_equals_calculator(name, system):
    model = small_model(name)
    atoms = system()
    unified = EqGNNMLIAP(model, keep_freed_memory=False)
    assert unified.receptive_field == pytest.approx(2 * 3.2)
    data = evaluate(unified, atoms, shell=unified.receptive_field + 1e-6)
    ref = reference(model, atoms)
    if atoms.pbc.any():
        assert data.ntotal > 10 * data.nlocal  # many images: the cell is smaller than the shell
    assert abs(data.energy - ref["energy"]) < 1e-10
    np.testing.assert_allclose(data.eatoms, ref["energies"], rtol=0, atol=1e-10)
    forces = data.folded_forces()
    assert np.abs(ref["forces"]).max() > 1e-4  # not a trivially zero comparison
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=1e-10)
    if "virial" in ref:
        np.testing.assert_allclose(data.virial, ref["virial"], rtol=0, atol=1e-10)


def test_egnn_with_coordinate_updates():
    model = small_model("egnn", coord_update=True)
    atoms = periodic_system()
    unified = EqGNNMLIAP(model, keep_freed_memory=False)
    data = evaluate(unified, atoms, shell=unified.receptive_field + 1e-6)
    ref = reference(model, atoms)
    np.testing.assert_allclose(data.folded_forces(), ref["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(data.virial, ref["virial"], rtol=0, atol=1e-10)


def test_too_thin_ghost_shell_is_wrong():
    """The comparison can fail: with one cutoff of ghosts (not layers x cutoff) forces are off."""
    model = small_model("painn")
    atoms = periodic_system()
    unified = EqGNNMLIAP(model, keep_freed_memory=False)
    data = evaluate(unified, atoms, shell=3.2 + 1e-6)
    assert np.abs(data.folded_forces() - reference(model, atoms)["forces"]).max() > 1e-6


def test_thicker_shell_same_result_and_pruned(monkeypatch):
    """A shell with LAMMPS's skin on top gives the same numbers; the atoms beyond layers hops and
    the pairs among the outermost ones are not evaluated."""
    model = small_model("tp")
    atoms = periodic_system()
    unified = EqGNNMLIAP(model, keep_freed_memory=False)
    seen = []
    original = model_module.energies_and_pair_gradients

    def spy(model, species, edge_index, vec, hop, **options):
        seen.append((species.shape[0], edge_index.shape[1]))
        return original(model, species, edge_index, vec, hop, **options)

    monkeypatch.setattr(mliap_module, "energies_and_pair_gradients", spy)
    data = evaluate(unified, atoms, shell=unified.receptive_field + 2.0)
    ref = reference(model, atoms)
    np.testing.assert_allclose(data.folded_forces(), ref["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(data.virial, ref["virial"], rtol=0, atol=1e-10)
    nodes, pairs = seen[0]
    assert nodes < data.ntotal and pairs < data.npairs


def test_hop_distances_and_pruning_on_a_chain():
    # chain 0-1-2-3-4-5 (both directions), source 0, two layers
    i = torch.tensor([0, 1, 1, 2, 2, 3, 3, 4, 4, 5])
    j = torch.tensor([1, 0, 2, 1, 3, 2, 4, 3, 5, 4])
    edges = torch.stack([i, j])
    assert model_module.hop_distances(edges, 6, torch.tensor([0]), 3).tolist() == [0, 1, 2, 3, 4, 4]
    nodes, kept, sub, hop = model_module.prune_to_hops(edges, 6, torch.tensor([0]), 2)
    assert nodes.tolist() == [0, 1, 2] and hop.tolist() == [0, 1, 2]
    # pairs into atoms within one hop: 0->1, 1->0, 1->2 (not 2->1: atom 2 only needs its embedding)
    assert edges[:, kept].tolist() == [[0, 1, 1], [1, 0, 2]] and sub.tolist() == [[0, 1, 1], [1, 0, 2]]


def test_float32():
    model = small_model("painn")
    atoms = periodic_system()
    unified = EqGNNMLIAP(model, dtype="float32", keep_freed_memory=False)
    assert unified.model.dtype == torch.float32
    data = evaluate(unified, atoms, shell=unified.receptive_field + 1e-6)
    ref = reference(model, atoms)
    np.testing.assert_allclose(data.folded_forces(), ref["forces"], rtol=0, atol=1e-4)
    assert abs(data.energy - ref["energy"]) < 1e-4


def test_element_order_follows_lammps_types():
    """pair_coeff maps types to element_types by name: the species come from elems, whatever order."""
    model = small_model("painn")
    unified = EqGNNMLIAP(model, keep_freed_memory=False)
    assert unified.element_types == ["Ni", "Cu"]  # the model's species order (by atomic number)
    atoms = periodic_system()
    atoms.symbols = ["Ni" if s == "Cu" else "Cu" for s in atoms.get_chemical_symbols()]
    data = evaluate(unified, atoms, shell=unified.receptive_field + 1e-6)
    np.testing.assert_allclose(data.folded_forces(), reference(model, atoms)["forces"],
                               rtol=0, atol=1e-10)


def test_null_types_are_refused():
    unified = EqGNNMLIAP(small_model("egnn"), keep_freed_memory=False)
    data = FakeData(periodic_system(), unified.element_types, 6.5, 3.2)
    data.elems[0] = -1
    with pytest.raises(ValueError, match="NULL"):
        unified.compute_forces(data)


def test_no_pairs_gives_reference_energies():
    model = small_model("tp")
    atoms = Atoms("CuNi", positions=[[0, 0, 0], [10, 0, 0]])
    unified = EqGNNMLIAP(model, keep_freed_memory=False)
    data = evaluate(unified, atoms, shell=7.0)
    assert data.npairs == 0 and data.f.sum() == 0
    assert abs(data.energy - reference(model, atoms)["energy"]) < 1e-12


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_rank_without_atoms(name):
    """A rank may own no atoms (a molecule in a large box on many ranks): zero energy, no forces."""
    unified = EqGNNMLIAP(small_model(name), keep_freed_memory=False)
    data = FakeData(Atoms(), unified.element_types, 6.5, 3.2)
    unified.compute_forces(data)
    assert data.energy == 0.0 and data.ntotal == 0


# ------------------------------------------------------------------------------------ the file
def globals_named(blob):
    """(module, name) of every global a pickle imports when loaded."""
    out, strings = [], []
    for op, arg, _ in pickletools.genops(blob):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            out.append(tuple(strings[-2:]))
        elif op.name in ("GLOBAL", "INST"):
            out.append(tuple(arg.split(" ")))
    return out


def test_pickle_names_only_this_class_and_round_trips():
    model = small_model("tp")
    unified = EqGNNMLIAP(model, keep_freed_memory=False)
    blob = pickle.dumps(unified, protocol=export_module.PICKLE_PROTOCOL)
    assert globals_named(blob) == [("ase_eqgnn.lammps.mliap", "EqGNNMLIAP")]
    again = pickle.loads(blob)
    assert isinstance(again, EqGNNMLIAP) and again.dtype_name == "float64"
    atoms = periodic_system()
    a = evaluate(unified, atoms, 6.5)
    b = evaluate(again, atoms, 6.5)
    assert a.energy == b.energy
    np.testing.assert_array_equal(a.f, b.f)


def test_export_writes_file_and_input_lines(tmp_path):
    model = small_model("egnn")
    path = tmp_path / "m.mliap.pkl"
    result = export_mliap(model, path, dtype="float32")
    assert result.input_lines[:2] == [f"pair_style mliap unified {path} 0", "pair_coeff * * Ni Cu"]
    assert result.input_lines[2:] == list(HALO_LINES)
    ghosts_evaluated = export_mliap(model, path, dtype="float32", halo=False)
    assert ghosts_evaluated.input_lines == [f"pair_style mliap unified {path} 1",
                                            "pair_coeff * * Ni Cu", "comm_modify cutoff 8.4"]
    with open(path, "rb") as f:
        loaded = pickle.load(f)
    assert loaded.dtype_name == "float32" and loaded.element_types == ["Ni", "Cu"]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


@pytest.mark.parametrize("name", ["m.pt", "m.PTH"])
def test_export_refuses_torch_names(tmp_path, name):
    with pytest.raises(ValueError, match="torch.load"):
        export_mliap(small_model("egnn"), tmp_path / name)
    assert not (tmp_path / name).exists()


def test_failed_export_leaves_existing_file(tmp_path):
    path = tmp_path / "m.mliap.pkl"
    path.write_bytes(b"old")
    with pytest.raises(ValueError):
        export_mliap(str(tmp_path / "missing.pt"), path)
    with pytest.raises(ValueError):
        export_mliap(small_model("egnn"), path, dtype="float16")
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


def test_works_without_lammps():
    """With the lammps module unimportable the class has the same attributes and pickles alike."""
    code = ("import sys; sys.modules['lammps'] = None\n"
            "from ase_eqgnn.lammps import EqGNNMLIAP\n"
            "from ase_eqgnn.lammps.mliap import _UnifiedBase\n"
            "u = EqGNNMLIAP('cu-emt')\n"
            "assert _UnifiedBase is object and u.element_types == ['Cu'] and u.rcutfac == 2.25\n"
            "import pickle; assert pickle.loads(pickle.dumps(u)).ndescriptors == 1\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------ eqgnn-lammps-export
def test_export_command_default_name_and_lines(tmp_path, monkeypatch, capsys):
    from ase_eqgnn.cli import lammps_export

    monkeypatch.chdir(tmp_path)
    assert lammps_export.main(["cu-emt", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "pair_style mliap unified cu-emt.mliap.pkl 0" in out and "pair_coeff * * Cu" in out
    assert all(line in out for line in HALO_LINES) and "comm_modify" not in out
    with open(tmp_path / "cu-emt.mliap.pkl", "rb") as f:
        assert pickle.load(f).dtype_name == "float32"
    assert lammps_export.main(["cu-emt", "--no-halo"]) == 0
    out = capsys.readouterr().out
    assert "pair_style mliap unified cu-emt.mliap.pkl 1" in out
    assert "comm_modify cutoff 11" in out and "eqgnn_attach" not in out  # 2 x 4.5 Å + 2 Å
    assert "raise it if the input's neighbor skin is larger" in out
    assert lammps_export.main(["cu-emt", "-o", "x.pkl", "--no-halo", "--skin", "1.0"]) == 0
    assert "comm_modify cutoff 10" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["cu-emt", "-o", "x.pt"], "torch.load"),
    (["nope"], "no bundled potential"),
    (["missing.pt"], "does not exist"),
    (["cu-emt", "--skin", "nan"], "--skin"),
    (["cu-emt", "--threads", "-2"], "positive integer"),
    (["cu-emt", "-o", "no/such/dir/x.pkl"], "does not exist"),
    ([], "model"),
])
def test_export_command_errors(tmp_path, monkeypatch, capsys, args, message):
    from ase_eqgnn.cli import lammps_export

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.pkl").write_bytes(b"keep")
    try:
        code = lammps_export.main(args)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("eqgnn-lammps-export: error: ")
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pkl"]
    assert (tmp_path / "x.pkl").read_bytes() == b"keep"
