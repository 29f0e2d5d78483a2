"""MD and relaxation drivers (ase_eqgnn.simulate) and their command-line front-ends."""

import csv
import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.io import read, write

from ase_eqgnn import EqGNNCalculator, build_model, save_model
from ase_eqgnn.cli import md as md_cli
from ase_eqgnn.cli import relax as relax_cli
from ase_eqgnn.errors import AtomsTooCloseError, OutOfDomainError
from ase_eqgnn.simulate import relax, run_md, thermalize


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("painn", species=[1, 6, 8, 29], cutoff=4.0, features=16, layers=2)
    with torch.no_grad():
        m.scale.fill_(0.5)
    return m


def copper():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.02, seed=0)
    return atoms


def test_nve_run_writes_files_and_reports_drift(model, tmp_path):
    atoms = copper()
    calc = EqGNNCalculator(model, dtype="float64")
    s = run_md(atoms, calc, "nve", temperature_K=300, timestep_fs=1.0, steps=40, interval=5,
               traj=str(tmp_path / "a.traj"), log=str(tmp_path / "a.csv"),
               plot=str(tmp_path / "a.png"), progress=False)
    assert s.completed and s.steps == 40
    assert np.isfinite(s.energy_drift_meV_per_atom_per_ps)
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert len(rows) == 9 and rows[-1]["step"] == "40"
    etot = np.array([float(r["etot_eV"]) for r in rows])
    assert np.ptp(etot) < 0.01 * len(atoms)
    assert len(read(tmp_path / "a.traj", ":")) == 9
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_nvt_and_npt_run(model, tmp_path):
    calc = EqGNNCalculator(model, dtype="float64")
    s = run_md(copper(), calc, "nvt", temperature_K=500, steps=20, interval=10, traj=None, log=None,
               plot=None, progress=False)
    assert s.completed and np.isfinite(s.temperature_mean_K)
    atoms = copper()
    s = run_md(atoms, EqGNNCalculator(model, dtype="float64"), "npt", temperature_K=300, steps=20,
               interval=10, traj=None, log=str(tmp_path / "n.csv"), plot=None, progress=False)
    assert s.completed
    volumes = [float(r["volume_A3"]) for r in csv.DictReader(open(tmp_path / "n.csv"))]
    assert len(set(volumes)) > 1  # the barostat moves the cell


@pytest.mark.slow
def test_nvt_holds_the_target_temperature_of_a_small_cluster():
    # 13 Lennard-Jones atoms of masses 1 and 16 (a light-heavy mix like a peptide's H and C/N/O):
    # Langevin's old fixcm=True ran this at ~370 K for 300 K; with the FixCom constraint the mean over
    # 20 ps (about 200 independent samples, spread ~70 K) must sit within 25 K of the target.
    from ase.calculators.lj import LennardJones
    from ase.cluster import Icosahedron

    atoms = Icosahedron("Cu", 2)
    atoms.positions *= 2.5 * 2 ** (1 / 6) / 2.55  # nearest neighbours at the LJ minimum
    atoms.set_masses([1.0 if k % 2 else 16.0 for k in range(len(atoms))])
    calc = LennardJones(sigma=2.5, epsilon=0.2, rc=7.0, smooth=True)
    summary = run_md(atoms, calc, "nvt", temperature_K=300.0, timestep_fs=2.0, steps=10000,
                     interval=20, traj=None, log=None, plot=None, progress=False, seed=1)
    assert summary.completed, summary.message
    assert abs(summary.temperature_mean_K - 300.0) < 25.0, summary.temperature_mean_K


def test_blow_up_is_detected_and_files_kept(model, tmp_path):
    # a cold start (100 K) under a strong 3000 K thermostat heats past the 400 K limit within 50 steps
    calc = EqGNNCalculator(model, dtype="float64")
    atoms = copper()
    thermalize(atoms, 100.0, np.random.default_rng(0))
    s = run_md(atoms, calc, "nvt", temperature_K=3000, friction_per_fs=0.1, steps=50, interval=5,
               max_temperature_K=400.0, traj=str(tmp_path / "b.traj"), log=str(tmp_path / "b.csv"),
               plot=None, progress=False)
    assert not s.completed and "temperature ran away" in s.message
    frames = read(tmp_path / "b.traj", ":")
    assert 1 <= len(frames) < 11 and s.files == {"traj": str(tmp_path / "b.traj"),
                                                  "log": str(tmp_path / "b.csv")}
    # a start already above the limit is the caller's mistake: nothing is written
    with pytest.raises(ValueError, match="starting structure"):
        run_md(copper(), calc, "nvt", temperature_K=300, steps=5, max_temperature_K=1.0,
               traj=str(tmp_path / "c.traj"), log=None, plot=None, progress=False)
    assert not (tmp_path / "c.traj").exists()
    mol = molecule("CH4")
    mol.calc = EqGNNCalculator(model, dtype="float64")
    momenta = np.zeros((5, 3))
    momenta[1] = [0, 0, 2000.0]  # one hydrogen shot away
    mol.set_momenta(momenta)
    s = run_md(mol, mol.calc, "nve", steps=200, interval=5, traj=None, log=None, plot=None,
               max_temperature_K=1e12, progress=False)
    assert not s.completed and "flew apart" in s.message and "[1]" in s.message


def test_relax_positions_and_cell(model, tmp_path):
    atoms = copper()
    s = relax(atoms, EqGNNCalculator(model, dtype="float64"), fmax=0.05, cell=True,
              out=str(tmp_path / "r.xyz"), logfile=None)
    # the filter's convergence test mixes atom and cell forces: atom forces end within a few %
    assert s.converged and s.max_force_eV_per_A < 0.055 and len(s.stress_eV_per_A3) == 6
    assert len(read(tmp_path / "r.xyz")) == len(atoms)
    with pytest.raises(ValueError, match="optimizer"):
        relax(copper(), EqGNNCalculator(model), optimizer="lbfgsx")


def test_command_line_front_ends(model, tmp_path, capsys):
    path = tmp_path / "m.pt"
    save_model(model, path)
    write(tmp_path / "cu.xyz", copper())
    rc = md_cli.main([str(tmp_path / "cu.xyz"), "--model", str(path), "--steps", "10", "--interval", "5",
                      "--ensemble", "nve", "--traj", str(tmp_path / "c.traj"), "--log",
                      str(tmp_path / "c.csv"), "--plot", str(tmp_path / "c.png"), "--json",
                      str(tmp_path / "c.json"), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "energy drift" in out
    summary = json.loads((tmp_path / "c.json").read_text(),  # strict JSON: no NaN tokens
                         parse_constant=lambda token: pytest.fail(f"{token} in the JSON summary"))
    assert summary["steps"] == 10 and summary["temperature_mean_K"] is not None
    rc = relax_cli.main([str(tmp_path / "cu.xyz"), "--model", str(path), "--cell", "--fmax", "0.05",
                         "--out", str(tmp_path / "relaxed.xyz")])
    assert rc == 0
    assert "converged" in capsys.readouterr().out
    # NVT has no energy drift: null in the JSON, not a NaN token
    assert md_cli.main([str(tmp_path / "cu.xyz"), "--model", str(path), "--steps", "5", "--traj",
                        "none", "--log", "none", "--plot", "none", "--json", str(tmp_path / "d.json"),
                        "--no-progress"]) == 0
    summary = json.loads((tmp_path / "d.json").read_text(),
                         parse_constant=lambda token: pytest.fail(f"{token} in the JSON summary"))
    assert summary["energy_drift_meV_per_atom_per_ps"] is None and summary["files"] == {}
    assert md_cli.main([str(tmp_path / "cu.xyz"), "--model", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------- failures (docs/reliability.md)
class Tripwire(EMT):
    """EMT that raises ``error`` from its ``after + 1``-th calculation on (a stand-in for a
    calculator that meets a collision, leaves its domain, is interrupted or has a bug)."""

    def __init__(self, error: BaseException, after: int):
        super().__init__()
        self.error, self.after, self.calls = error, after, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls += 1
        if self.calls > self.after:
            raise self.error
        super().calculate(atoms, properties, system_changes)


def plant(folder, names):
    """Files of an earlier run; returns their bytes."""
    for name in names:
        (folder / name).write_bytes(f"earlier {name}\n".encode() * 20)
    return {name: (folder / name).read_bytes() for name in names}


def md_files(folder):
    return dict(traj=str(folder / "md.traj"), log=str(folder / "md.csv"), plot=str(folder / "md.png"))


def test_collision_during_md_stops_the_run_and_keeps_the_frames(model, tmp_path):
    from ase import units

    plant(tmp_path, ["md.traj", "md.csv", "md.png"])
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1.0]])
    v = 0.04 * units.Ang / units.fs
    atoms.set_velocities([[0, 0, v], [0, 0, -v]])
    s = run_md(atoms, EqGNNCalculator(model, dtype="float64"), "nve", steps=200, interval=5,
               progress=False, **md_files(tmp_path))
    assert not s.completed and s.message.startswith("stopped: atoms collided at step")
    assert s.files == md_files(tmp_path)
    frames = read(tmp_path / "md.traj", ":")
    assert len(frames) >= 2 and frames[-1].get_distance(0, 1) > 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["md.csv", "md.png", "md.traj"]


def test_leaving_the_domain_stops_md_and_relax_but_a_start_outside_is_an_error(tmp_path):
    earlier = plant(tmp_path, ["md.traj", "md.csv", "md.png", "out.xyz", "opt.traj"])
    s = run_md(copper(), Tripwire(OutOfDomainError("Cu-Cu at 1.1 Å"), after=12), "nvt", steps=50,
               interval=5, progress=False, **md_files(tmp_path))
    assert not s.completed and "left the model's training domain at step" in s.message
    assert len(read(tmp_path / "md.traj", ":")) == 3 and set(s.files) == {"traj", "log", "plot"}
    # a relaxation stopped by the physics keeps its trajectory but writes no "relaxed" structure
    r = relax(copper(), Tripwire(OutOfDomainError("Cu-Cu at 1.1 Å"), after=3), out=str(tmp_path / "out.xyz"),
              trajectory=str(tmp_path / "opt.traj"), logfile=None)
    assert not r.completed and not r.converged and "training domain" in r.message
    assert r.files == {"traj": str(tmp_path / "opt.traj")} and r.output is None
    assert (tmp_path / "out.xyz").read_bytes() == earlier["out.xyz"]
    assert len(read(tmp_path / "opt.traj", ":")) >= 1
    # outside the domain from the start: the caller's mistake, raised before anything is written
    earlier = plant(tmp_path, ["md.traj", "md.csv", "md.png"])
    with pytest.raises(OutOfDomainError):
        run_md(copper(), Tripwire(OutOfDomainError("x"), after=0), "nvt", steps=5, progress=False,
               **md_files(tmp_path))
    assert {n: (tmp_path / n).read_bytes() for n in earlier} == earlier


def test_a_run_cut_off_after_its_first_step_keeps_its_frames_and_before_it_nothing(tmp_path):
    plant(tmp_path, ["md.traj", "md.csv", "md.png"])
    with pytest.raises(KeyboardInterrupt):
        run_md(copper(), Tripwire(KeyboardInterrupt(), after=12), "nve", steps=50, interval=5,
               progress=False, **md_files(tmp_path))
    assert len(read(tmp_path / "md.traj", ":")) == 3
    assert (tmp_path / "md.png").read_bytes().startswith(b"earlier")  # no plot for a cut-off run
    # after the first step the trajectory streams under its final name: an error keeps the frames
    earlier = plant(tmp_path, ["md.traj", "md.csv", "md.png"])
    with pytest.raises(RuntimeError, match="a bug"):
        run_md(copper(), Tripwire(RuntimeError("a bug"), after=12), "nve", steps=50, interval=5,
               progress=False, **md_files(tmp_path))
    assert len(read(tmp_path / "md.traj", ":")) == 3 and len((tmp_path / "md.csv").read_text().split()) == 4
    assert (tmp_path / "md.png").read_bytes() == earlier["md.png"]
    # an error in the first step (call 1 is the check of the start): every file as it was
    earlier = plant(tmp_path, ["md.traj", "md.csv", "md.png"])
    with pytest.raises(RuntimeError, match="a bug"):
        run_md(copper(), Tripwire(RuntimeError("a bug"), after=1), "nve", steps=50, interval=5,
               progress=False, **md_files(tmp_path))
    assert {n: (tmp_path / n).read_bytes() for n in earlier} == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(earlier)  # no temporary left


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature_K=float("nan")), "temperature"), (dict(temperature_K=-1.0), "temperature"),
    (dict(timestep_fs=float("nan")), "timestep"), (dict(timestep_fs=0.0), "timestep"),
    (dict(steps=-5), "steps"), (dict(steps=2.5), "steps"), (dict(interval=0), "interval"),
    (dict(friction_per_fs=float("inf")), "friction"), (dict(pressure_bar=float("nan")), "pressure"),
    (dict(seed=-1), "seed"), (dict(ensemble="npt"), "periodic"), (dict(ensemble="nph"), "ensemble"),
    (dict(traj="x.dcd"), "extension"), (dict(log="x.json"), "extension"),
    (dict(plot="x.gif"), "extension"),
])
def test_bad_md_arguments_raise_before_any_file_is_written(kwargs, message, tmp_path):
    earlier = plant(tmp_path, ["md.traj", "md.csv", "md.png"])
    args = dict(md_files(tmp_path), progress=False, steps=5)
    args.update({k: (str(tmp_path / v) if k in ("traj", "log", "plot") else v) for k, v in kwargs.items()})
    with pytest.raises(ValueError, match=message):
        run_md(molecule("H2O"), EMT(), **{"ensemble": "nve", **args})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == earlier


def test_log_and_trajectory_formats(model, tmp_path):
    calc = EqGNNCalculator(model, dtype="float64")
    s = run_md(copper(), calc, "nve", steps=10, interval=5, traj=str(tmp_path / "t.xyz"),
               log=str(tmp_path / "t.log"), plot=str(tmp_path / "t.svg"), progress=False)
    assert s.completed
    frames = read(tmp_path / "t.xyz", ":")
    assert len(frames) == 3 and np.isfinite(frames[-1].get_potential_energy())
    lines = (tmp_path / "t.log").read_text().splitlines()  # ASE's MDLogger table
    assert lines[0].split()[:2] == ["Time[ps]", "Etot[eV]"] and len(lines) == 4
    assert float(lines[-1].split()[0]) == pytest.approx(0.005)  # 10 steps of 0.5 fs, in ps
    assert (tmp_path / "t.svg").read_text().lstrip().startswith("<?xml")


def test_no_deprecation_warning_and_a_single_atom(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        s = run_md(copper(), EMT(), "nvt", steps=5, interval=5, traj=None, log=None, plot=None,
                   progress=False)
    assert s.completed
    # one atom: velocities finite (ASE's ZeroRotation would give NaN), NVT refused (nothing can move)
    s = run_md(Atoms("Cu", positions=[[0, 0, 0]]), EMT(), "nve", steps=5, traj=None, log=None,
               plot=None, progress=False)
    assert s.completed and np.isfinite(s.temperature_mean_K)
    with pytest.raises(ValueError, match="single atom"):
        run_md(Atoms("Cu", positions=[[0, 0, 0]]), EMT(), "nvt", steps=5, traj=None, log=None,
               plot=None, progress=False)


def test_relax_refuses_bad_input_before_writing(tmp_path):
    earlier = plant(tmp_path, ["out.xyz", "opt.traj"])
    files = dict(out=str(tmp_path / "out.xyz"), trajectory=str(tmp_path / "opt.traj"), logfile=None)
    for kwargs, message in ((dict(fmax=float("nan")), "fmax"), (dict(steps=-1), "steps"),
                            (dict(out=str(tmp_path / "out.nope")), "cannot write"),
                            (dict(trajectory=str(tmp_path / "opt.xyz")), "extension")):
        with pytest.raises(ValueError, match=message):
            relax(copper(), EMT(), **{**files, **kwargs})
    with pytest.raises(ValueError, match="periodic"):
        relax(molecule("H2O"), EMT(), cell=True, **files)
    overlapping = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 0.05]], cell=[5, 5, 5], pbc=True)
    with pytest.raises(AtomsTooCloseError):
        relax(overlapping, EqGNNCalculator(build_model("painn", ["Cu"], cutoff=3.0, features=8,
                                                       layers=1)), **files)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == earlier


def test_npt_at_absurd_pressure_is_a_physics_stop(model):
    # 1e7 bar squeezes the weak test model's copper: the volume runs away (below a tenth) within 40
    # steps; -1e7 bar blows the cell up until atoms lose their neighbours
    s = run_md(copper(), EqGNNCalculator(model, dtype="float64"), "npt", steps=200, interval=5,
               pressure_bar=1e7, traj=None, log=None, plot=None, progress=False)
    assert not s.completed and "cell volume ran away" in s.message
    s = run_md(copper(), EqGNNCalculator(model, dtype="float64"), "npt", steps=200, interval=5,
               pressure_bar=-1e7, traj=None, log=None, plot=None, progress=False)
    assert not s.completed and ("flew apart" in s.message or "volume ran away" in s.message)
