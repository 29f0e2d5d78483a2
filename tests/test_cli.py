"""The installed ``eqgnn-*`` commands as a user meets them: run as subprocesses on bad inputs, on a run
stopped by the physics, and on a run that succeeds, in a folder holding an earlier run's files.

For every bad input: exit code 2, one line ``eqgnn-xxx: error: ...`` naming the problem, no traceback,
and the folder exactly as it was (every file byte for byte, no file added). The long table runs in CI
(``-m slow``); a few cases of each command run in the fast suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.constraints import FixAtoms
from ase.io import read, write

from ase_eqgnn import build_model, save_model

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Bytes an earlier run left: any change to them is a lost file.
EARLIER_RUN = {name: f"earlier run's {name}\n".encode() * 50 for name in
               ("md.traj", "md.csv", "md.png", "md.json", "relaxed.xyz", "relax.traj", "aa.pdb",
                "metrics.json", "parity.png", "notes.txt")}


def console_script(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"console script {name} is not installed (pip install -e .)"
    return found


def run_tool(name: str, args, cwd, timeout: float = 600) -> subprocess.CompletedProcess:
    # no GPU for the commands, so --device cuda is a user error on every machine
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([console_script(name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def tiny_model():
    torch.manual_seed(0)
    model = build_model("painn", species=[1, 6, 8, 29], cutoff=4.0, features=16, layers=2)
    with torch.no_grad():
        model.scale.fill_(0.5)
    return model


def head_on(distance: float = 1.0, speed_A_per_fs: float = 0.04) -> Atoms:
    """Two H atoms flying at each other: within min_distance (0.1 Å) after ~22 steps of 0.5 fs."""
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, distance]])
    v = speed_A_per_fs * units.Ang / units.fs
    atoms.set_velocities([[0, 0, v], [0, 0, -v]])
    return atoms


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A folder with inputs (good and bad) and the files of an earlier run."""
    folder = tmp_path_factory.mktemp("template")
    save_model(tiny_model(), folder / "tiny.pt")
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    cu.rattle(0.02, seed=0)
    write(folder / "cu.xyz", cu)
    write(folder / "h2o.xyz", molecule("H2O"))
    write(folder / "start.traj", molecule("H2O"))
    write(folder / "au.xyz", Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]]))
    write(folder / "overlap.xyz", Atoms("H2O", positions=[[0, 0, 0], [0, 0, 0.05], [0, 1, 0]]))
    write(folder / "single.xyz", Atoms("H", positions=[[0, 0, 0]]))
    write(folder / "collide.extxyz", head_on())
    nan_atoms = molecule("H2O")
    nan_atoms.positions[1, 0] = np.nan
    write(folder / "nan.extxyz", nan_atoms)
    fixed = molecule("H2O")
    fixed.set_constraint(FixAtoms(indices=[0, 1, 2]))
    write(folder / "all_fixed.traj", fixed)
    (folder / "damaged.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(3000))
    (folder / "empty.xyz").write_text("")
    (folder / "garbage.xyz").write_bytes(os.urandom(2000))
    (folder / "garbage.pt").write_bytes(b"not a model\n" * 10)
    (folder / "a_folder").mkdir()
    shutil.copy(ROOT / "training" / "data" / "cu_emt_test.extxyz", folder / "cu_data.extxyz")
    # CG input for the bundled ala2 back-mapper: 2 frames of its 5 beads, and broken variants
    import mdtraj

    from ase_eqgnn.cg.maps import ala2_five_bead_map
    from ase_eqgnn.structures import structure_path

    traj = mdtraj.load(str(structure_path("ala2")))
    cg = ala2_five_bead_map(traj.topology).bead_positions(np.repeat(traj.xyz * 10.0, 2, axis=0))
    np.save(folder / "cg.npy", cg)
    np.save(folder / "cg4.npy", cg[:, :4])
    cg_nan = cg.copy()
    cg_nan[0, 0, 0] = np.nan
    np.save(folder / "cg_nan.npy", cg_nan)
    np.save(folder / "cg_object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name, data in EARLIER_RUN.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def workdir(template, tmp_path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(template, folder)
    return folder


# (command, arguments, a fragment the one-line error must contain); cwd is a copy of the template
MD_MODEL = ["--model", "tiny.pt", "--no-progress", "--steps", "5"]
BAD_INPUTS = {
    # -------------------------------------------------------------------------------- eqgnn-md
    "md-unknown-element": ("eqgnn-md", ["au.xyz", *MD_MODEL], "Au not known to this model"),
    "md-temperature-nan": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--temperature", "nan"], "--temperature"),
    "md-collision-at-step-0": ("eqgnn-md", ["overlap.xyz", *MD_MODEL], "overlapping"),
    "md-traj-extension": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--traj", "md.dcd"], "extension '.dcd'"),
    "md-temperature-negative": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--temperature", "-100"], ">= 0"),
    "md-timestep-nan": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--timestep", "nan"], "--timestep"),
    "md-timestep-zero": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--timestep", "0"], "> 0"),
    "md-steps-negative": ("eqgnn-md", ["cu.xyz", "--model", "tiny.pt", "--steps", "-5"], "--steps"),
    "md-interval-zero": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--interval", "0"], "--interval"),
    "md-friction-nan": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--friction", "nan"], "--friction"),
    "md-pressure-inf": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--pressure", "inf"], "--pressure"),
    "md-seed-negative": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--seed", "-1"], "--seed"),
    "md-threads-zero": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--threads", "0"], "--threads"),
    "md-threads-huge": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--threads", "100000000"], "--threads"),
    "md-device-cuda": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--device", "cuda"], "CUDA"),
    "md-device-meta": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--device", "meta"], "not supported"),
    "md-device-garbage": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--device", "gpu0"], "--device"),
    "md-dtype": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--dtype", "float16"], "--dtype"),
    "md-unknown-option": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--temprature", "300"], "unrecognized"),
    "md-npt-molecule": ("eqgnn-md", ["h2o.xyz", *MD_MODEL, "--ensemble", "npt"], "periodic"),
    "md-npt-zero-kelvin": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--ensemble", "npt", "--temperature", "0"],
                           "NPT needs a temperature > 0"),
    "md-nvt-single-atom": ("eqgnn-md", ["single.xyz", *MD_MODEL], "single atom"),
    "md-missing-structure": ("eqgnn-md", ["nothere.xyz", *MD_MODEL], "does not exist"),
    "md-empty-structure": ("eqgnn-md", ["empty.xyz", *MD_MODEL], "empty.xyz"),
    "md-garbage-structure": ("eqgnn-md", ["garbage.xyz", *MD_MODEL], "cannot read structure"),
    "md-structure-is-folder": ("eqgnn-md", ["a_folder", *MD_MODEL], "not a file"),
    "md-nan-positions": ("eqgnn-md", ["nan.extxyz", *MD_MODEL], "NaN"),
    "md-missing-model": ("eqgnn-md", ["cu.xyz", "--model", "nothere.pt"], "does not exist"),
    "md-unknown-model-name": ("eqgnn-md", ["cu.xyz", "--model", "water"], "no bundled potential"),
    "md-garbage-model": ("eqgnn-md", ["cu.xyz", "--model", "garbage.pt"], "garbage.pt"),
    "md-structure-as-model": ("eqgnn-md", ["cu.xyz", "--model", "cu.xyz"], "cu.xyz"),
    "md-traj-is-folder": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--traj", "a_folder"], "folder"),
    "md-traj-under-a-file": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--traj", "notes.txt/md.traj"], "not a folder"),
    "md-output-is-input": ("eqgnn-md", ["start.traj", *MD_MODEL, "--traj", "start.traj"], "also an input"),
    "md-two-outputs-one-file": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--json", "md.csv"], "same file"),
    "md-temperature-absurd": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--temperature", "1e200"], "<= 1e+06"),
    "md-all-atoms-fixed": ("eqgnn-md", ["all_fixed.traj", *MD_MODEL], "no degree of freedom"),
    "md-empty-output-path": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--traj", ""], "'none'"),
    "md-negative-number-needs-equals": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--pressure", "-1e5"],
                                        "expected one argument"),
    "md-log-extension": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--log", "md.dat"], "extension '.dat'"),
    "md-plot-extension": ("eqgnn-md", ["cu.xyz", *MD_MODEL, "--plot", "md.gif"], "extension '.gif'"),
    # -------------------------------------------------------------------------------- eqgnn-relax
    "relax-fmax-nan": ("eqgnn-relax", ["cu.xyz", "--model", "tiny.pt", "--fmax", "nan"], "--fmax"),
    "relax-fmax-zero": ("eqgnn-relax", ["cu.xyz", "--model", "tiny.pt", "--fmax", "0"], "--fmax"),
    "relax-steps-negative": ("eqgnn-relax", ["cu.xyz", "--model", "tiny.pt", "--steps", "-1"], "--steps"),
    "relax-unknown-element": ("eqgnn-relax", ["au.xyz", "--model", "tiny.pt"], "Au not known"),
    "relax-cell-molecule": ("eqgnn-relax", ["h2o.xyz", "--model", "tiny.pt", "--cell"], "periodic"),
    "relax-out-extension": ("eqgnn-relax", ["cu.xyz", "--model", "tiny.pt", "--out", "relaxed.foo"],
                            "relaxed.foo"),
    "relax-traj-extension": ("eqgnn-relax", ["cu.xyz", "--model", "tiny.pt", "--traj", "relax.xyz"],
                             "extension '.xyz'"),
    "relax-collision-at-step-0": ("eqgnn-relax", ["overlap.xyz", "--model", "tiny.pt"], "overlapping"),
    "relax-out-is-input": ("eqgnn-relax", ["cu.xyz", "--model", "tiny.pt", "--out", "cu.xyz"],
                           "also an input"),
    "relax-format-refuses-structure": ("eqgnn-relax", ["h2o.xyz", "--model", "tiny.pt", "--out", "POSCAR"],
                                       "cannot write this structure"),
    "relax-missing-structure": ("eqgnn-relax", ["nothere.xyz", "--model", "tiny.pt"], "does not exist"),
    "relax-garbage-model": ("eqgnn-relax", ["cu.xyz", "--model", "garbage.pt"], "garbage.pt"),
    "relax-device-cuda": ("eqgnn-relax", ["cu.xyz", "--model", "tiny.pt", "--device", "cuda"], "CUDA"),
    # -------------------------------------------------------------------------------- eqgnn-eval
    "eval-plot-extension": ("eqgnn-eval", ["cu-emt", "cu_data.extxyz", "--plot", "parity.jpg",
                                           "--json", "metrics.json"], "extension '.jpg'"),
    "eval-unknown-model": ("eqgnn-eval", ["water", "cu_data.extxyz", "--json", "metrics.json"],
                           "no bundled potential"),
    "eval-missing-data": ("eqgnn-eval", ["cu-emt", "nothere.extxyz", "--json", "metrics.json"],
                          "does not exist"),
    "eval-garbage-data": ("eqgnn-eval", ["cu-emt", "garbage.xyz", "--json", "metrics.json"],
                          "garbage.xyz"),
    "eval-garbage-model": ("eqgnn-eval", ["garbage.pt", "cu_data.extxyz", "--plot", "parity.png"],
                           "garbage.pt"),
    "eval-batch-size-zero": ("eqgnn-eval", ["cu-emt", "cu_data.extxyz", "--batch-size", "0"],
                             "--batch-size"),
    "eval-json-is-folder": ("eqgnn-eval", ["cu-emt", "cu_data.extxyz", "--json", "a_folder"], "folder"),
    "eval-json-is-data": ("eqgnn-eval", ["cu-emt", "cu_data.extxyz", "--json", "cu_data.extxyz"],
                          "also an input"),
    "eval-unknown-unit": ("eqgnn-eval", ["cu-emt", "cu_data.extxyz", "--energy-unit", "furlongs",
                                         "--json", "metrics.json"], "furlongs"),
    "eval-unknown-element": ("eqgnn-eval", ["tiny.pt", "au.xyz", "--json", "metrics.json"], "Au"),
    "eval-damaged-hdf5": ("eqgnn-eval", ["cu-emt", "damaged.h5", "--json", "metrics.json"], "damaged.h5"),
    "eval-device-cuda": ("eqgnn-eval", ["cu-emt", "cu_data.extxyz", "--device", "cuda"], "CUDA"),
    # -------------------------------------------------------------------------------- eqgnn-backmap
    "backmap-out-extension": ("eqgnn-backmap", ["--model", "ala2", "--cg", "cg.npy", "--out", "aa.gro"],
                              "extension '.gro'"),
    "backmap-wrong-beads": ("eqgnn-backmap", ["--model", "ala2", "--cg", "cg4.npy", "--out", "aa.pdb"],
                            "4 beads"),
    "backmap-nan-cg": ("eqgnn-backmap", ["--model", "ala2", "--cg", "cg_nan.npy", "--out", "aa.pdb"],
                       "NaN"),
    "backmap-pickled-cg": ("eqgnn-backmap", ["--model", "ala2", "--cg", "cg_object.npy", "--out",
                                             "aa.pdb"], "pickle"),
    "backmap-missing-cg": ("eqgnn-backmap", ["--model", "ala2", "--cg", "nothere.npy", "--out", "aa.pdb"],
                           "does not exist"),
    "backmap-samples-zero": ("eqgnn-backmap", ["--model", "ala2", "--cg", "cg.npy", "--out", "aa.pdb",
                                               "--samples", "0"], "--samples"),
    "backmap-samples-huge": ("eqgnn-backmap", ["--model", "ala2", "--cg", "cg.npy", "--out", "aa.pdb",
                                               "--samples", "1000000000000"], "GiB"),
    "backmap-temperature-nan": ("eqgnn-backmap", ["--model", "ala2", "--cg", "cg.npy", "--out", "aa.pdb",
                                                  "--temperature", "nan"], "--temperature"),
    "backmap-temperature-absurd": ("eqgnn-backmap", ["--model", "ala2", "--cg", "cg.npy", "--out",
                                                     "aa.pdb", "--temperature", "1e300"], "<= 100"),
    "backmap-seed-beyond-64-bits": ("eqgnn-backmap", ["--model", "ala2", "--cg", "cg.npy", "--out",
                                                      "aa.pdb", "--seed", str(2**64)], "--seed"),
    "backmap-garbage-model": ("eqgnn-backmap", ["--model", "garbage.pt", "--cg", "cg.npy", "--out",
                                                "aa.pdb"], "garbage.pt"),
    "backmap-potential-as-backmapper": ("eqgnn-backmap", ["--model", "tiny.pt", "--cg", "cg.npy",
                                                          "--out", "aa.pdb"], "tiny.pt"),
    "backmap-out-is-input": ("eqgnn-backmap", ["--model", "ala2", "--cg", "cg.npy", "--out", "cg.npy"],
                             "extension '.npy'"),
    # -------------------------------------------------------------------------------- the others
    "train-backmap-lr-nan": ("eqgnn-train-backmap", ["--traj", "cu.xyz", "--map", "ca", "--out", "run",
                                                     "--lr", "nan"], "--lr"),
    "train-backmap-missing-traj": ("eqgnn-train-backmap", ["--traj", "nothere.h5", "--map", "ca",
                                                           "--out", "run"], "does not exist"),
    "train-backmap-max-epochs-zero": ("eqgnn-train-backmap", ["--traj", "cu.xyz", "--out", "run",
                                                              "--max-epochs", "0"], "--max-epochs"),
    "train-backmap-device-cuda": ("eqgnn-train-backmap", ["--traj", "cu.xyz", "--out", "run", "--device",
                                                          "cuda"], "CUDA"),
    "models-unknown-kind": ("eqgnn-models", ["--kind", "forcefield"], "--kind"),
}
# Each case starts a Python with torch (2-3 s of CPU): the fast suite runs one per command family;
# test_simulate.py checks the same failures of the library, in process.
FAST = {"md-unknown-element", "relax-fmax-nan", "eval-plot-extension", "backmap-out-extension"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=() if c in FAST else pytest.mark.slow)
                                  for c in BAD_INPUTS])
def test_bad_input_is_a_one_line_error_that_changes_no_file(case, workdir):
    tool, args, fragment = BAD_INPUTS[case]
    before = snapshot(workdir)
    proc = run_tool(tool, args, workdir)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{tool}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr  # one line, the last
    # anything else on stderr is a Python warning (its line and the source line under it)
    assert all("Warning" in line or line.startswith(" ") for line in lines[:-1]), proc.stderr
    assert fragment in errors[0], errors[0]
    after = snapshot(workdir)
    assert sorted(after) == sorted(before), f"files added or removed: {set(after) ^ set(before)}"
    changed = [name for name in before if before[name] != after[name]]
    assert not changed, f"{case} changed {changed}"


def test_every_console_script_has_working_help(tmp_path):
    """``--help`` of each ``[project.scripts]`` entry of pyproject.toml exits 0 and prints usage."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(scripts) >= 7
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(scripts, pool.map(lambda name: run_tool(name, ["--help"], tmp_path), scripts)))
    broken = {name: (p.returncode, p.stderr[-400:]) for name, p in results.items()
              if p.returncode != 0 or "usage:" not in p.stdout or "Traceback" in p.stderr}
    assert not broken, broken
    for name, proc in results.items():
        if name != "eqgnn-train":  # its options come from TrainConfig (helper "train")
            assert "--threads" in proc.stdout, name


def test_collision_during_md_exits_3_and_keeps_the_frames_so_far(workdir):
    before = snapshot(workdir)
    proc = run_tool("eqgnn-md", ["collide.extxyz", "--model", "tiny.pt", "--ensemble", "nve",
                                 "--steps", "200", "--interval", "5", "--no-progress",
                                 "--json", "md.json"], workdir)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "atoms collided at step" in proc.stderr
    for name in ("md.traj", "md.csv", "md.png", "md.json"):
        assert name in proc.stderr  # named in the message ...
        assert (workdir / name).read_bytes() != before[name]  # ... and replaced by this run's
    frames = read(workdir / "md.traj", ":")
    rows = (workdir / "md.csv").read_text().splitlines()
    assert 2 <= len(frames) < 41 and len(rows) == len(frames) + 1
    # the last frame kept is before the collision, the atoms still apart
    assert frames[-1].get_distance(0, 1) > 0.1
    after = snapshot(workdir)
    assert set(after) == set(before)  # no temporary file left behind
    assert all(after[n] == before[n] for n in before if n not in ("md.traj", "md.csv", "md.png", "md.json"))


def test_success_replaces_only_the_named_outputs(workdir):
    before = snapshot(workdir)
    proc = run_tool("eqgnn-md", ["cu.xyz", "--model", "tiny.pt", "--ensemble", "nve", "--steps", "10",
                                 "--interval", "5", "--no-progress", "--plot", "none",
                                 "--log", "md.csv"], workdir)
    assert proc.returncode == 0, proc.stderr
    after = snapshot(workdir)
    assert set(after) == set(before)
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"md.traj", "md.csv"}
    assert len(read(workdir / "md.traj", ":")) == 3
    proc = run_tool("eqgnn-relax", ["cu.xyz", "--model", "tiny.pt", "--out", "relaxed.xyz",
                                    "--traj", "relax.traj"], workdir)
    assert proc.returncode in (0, 1), proc.stderr
    final = snapshot(workdir)
    assert {n for n in after if after[n] != final[n]} == {"relaxed.xyz", "relax.traj"}
    assert len(read(workdir / "relaxed.xyz")) == 32


def test_sigterm_stops_md_like_ctrl_c_and_keeps_the_frames(workdir):
    """A batch system's time limit sends SIGTERM: exit 143, the frames so far under their names."""
    import signal
    import time

    before = snapshot(workdir)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([console_script("eqgnn-md"), "cu.xyz", "--model", "tiny.pt", "--steps",
                             "1000000", "--interval", "1", "--no-progress"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        # the log streams under its final name from the first step on: wait for a few rows
        while (workdir / "md.csv").read_bytes() == before["md.csv"] or \
                len((workdir / "md.csv").read_text().splitlines()) < 4:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out + err
    assert "Traceback" not in err and "terminated (SIGTERM); kept" in err
    frames = read(workdir / "md.traj", ":")
    assert len(frames) >= 3 and len((workdir / "md.csv").read_text().splitlines()) >= len(frames)
    after = snapshot(workdir)
    assert set(after) == set(before) and after["md.png"] == before["md.png"]


def test_md_and_relax_ask_the_calculator_to_stop_out_of_the_domain_unless_allowed(template, tmp_path,
                                                                                   monkeypatch):
    """eqgnn-md / eqgnn-relax build the calculator with domain_check="raise", or "warn" with
    --allow-out-of-domain (the option helper "robust" gives EqGNNCalculator)."""
    import inspect

    import ase_eqgnn.calculator as calculator_module
    from ase_eqgnn.cli import md as md_cli
    from ase_eqgnn.cli import relax as relax_cli

    seen = []

    class Recording(calculator_module.EqGNNCalculator):
        def __init__(self, model, domain_check="warn", **kwargs):
            seen.append(domain_check)
            super().__init__(model, **kwargs)

    assert "domain_check" in inspect.signature(Recording.__init__).parameters
    monkeypatch.setattr(calculator_module, "EqGNNCalculator", Recording)
    monkeypatch.chdir(tmp_path)
    model, structure = str(template / "tiny.pt"), str(template / "h2o.xyz")
    for flags in ([], ["--allow-out-of-domain"]):
        assert md_cli.main([structure, "--model", model, "--steps", "0", "--no-progress", "--traj",
                            "none", "--log", "none", "--plot", "none", *flags]) == 0
        assert relax_cli.main([structure, "--model", model, "--steps", "0", "--out", "r.xyz",
                               *flags]) in (0, 1)
    assert seen == ["raise", "raise", "warn", "warn"]


def _domain_checks_available() -> bool:
    import inspect

    from ase_eqgnn import EqGNNCalculator

    return "domain_check" in inspect.signature(EqGNNCalculator.__init__).parameters


@pytest.mark.skipif(not _domain_checks_available(),
                    reason="EqGNNCalculator(domain_check=...) comes with helper robust's branch")
def test_leaving_the_training_domain_during_md_exits_3_and_a_start_outside_exits_2(workdir):
    from ase_eqgnn.checkpoint import load_model

    model = tiny_model()
    model.domain = {"H-H": 0.7}  # trained on H-H pairs no closer than 0.7 Å: flagged below 0.525 Å
    save_model(model, workdir / "domain.pt")
    assert load_model(workdir / "domain.pt").domain == {"H-H": 0.7}
    before = snapshot(workdir)
    proc = run_tool("eqgnn-md", ["collide.extxyz", "--model", "domain.pt", "--ensemble", "nve",
                                 "--steps", "200", "--interval", "5", "--no-progress"], workdir)
    assert proc.returncode == 3 and "training domain" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(read(workdir / "md.traj", ":")) >= 2
    proc = run_tool("eqgnn-md", ["collide.extxyz", "--model", "domain.pt", "--ensemble", "nve",
                                 "--steps", "200", "--interval", "5", "--no-progress",
                                 "--allow-out-of-domain"], workdir)
    assert proc.returncode == 3 and "atoms collided" in proc.stderr  # warned, went on, collided
    write(workdir / "close.xyz", Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.4]]))
    earlier = snapshot(workdir)
    proc = run_tool("eqgnn-md", ["close.xyz", "--model", "domain.pt", "--no-progress"], workdir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(workdir) == earlier
    assert set(before) <= set(earlier)


@pytest.mark.slow
def test_backmap_and_eval_replace_only_their_named_outputs(workdir):
    import mdtraj

    before = snapshot(workdir)
    proc = run_tool("eqgnn-backmap", ["--model", "ala2", "--cg", "cg.npy", "--out", "aa.pdb",
                                      "--samples", "2", "--seed", "0", "--no-progress"], workdir)
    assert proc.returncode == 0, proc.stderr
    assert mdtraj.load(str(workdir / "aa.pdb")).n_frames == 4
    proc = run_tool("eqgnn-eval", ["cu-emt", "cu_data.extxyz", "--json", "metrics.json", "--plot",
                                   "parity.png", "--index", "::10"], workdir)
    assert proc.returncode == 0, proc.stderr
    after = snapshot(workdir)
    assert set(after) == set(before)
    assert {n for n in before if before[n] != after[n]} == {"aa.pdb", "metrics.json", "parity.png"}
    assert after["parity.png"].startswith(b"\x89PNG")
