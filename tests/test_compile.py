"""EqGNNCalculator(compile=True): the compiled energy pass gives the eager results.

Compiling takes seconds to tens of seconds per model and shape kind on this machine, so the fast
suite compiles PaiNN (molecule and periodic cell) and the slow one the other families and MD.
"""

import contextlib
import warnings

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from conftest import maxwell_boltzmann
from ase.md.verlet import VelocityVerlet

from ase_eqgnn import EqGNNCalculator
from ase_eqgnn.graph import AtomicGraph
from ase_eqgnn.indexing import gather_rows, scatter_rows

from test_calculator import copper, make_model


def biphenyl_like():
    atoms = molecule("C6H6")
    other = molecule("C6H6")
    other.translate([0.0, 0.0, 3.4])
    atoms += other
    atoms.rattle(0.05, seed=3)
    return atoms


def results(calc, atoms, properties=("energy", "forces")):
    atoms = atoms.copy()
    calc.calculate(atoms, list(properties))
    return dict(calc.results)


def assert_same(a, b, rtol=1e-9):
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-10, err_msg=key)


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def check_compiled_matches_eager(name, systems):
    model = make_model(name, cutoff=4.0)
    eager = EqGNNCalculator(model, dtype="float64")
    compiled = EqGNNCalculator(model, dtype="float64", compile=True)
    widths_changed = []
    for atoms, properties in systems:
        rng = np.random.default_rng(0)
        previous = None
        for step in range(3):
            # later geometries change the numbers of pairs and the most neighbours of an atom
            # (the padded layout's width), which must not compile the function again
            graphs = compiled_graphs()
            atoms.positions += rng.normal(0.0, 0.15, atoms.positions.shape)
            with no_fallback():
                got = results(compiled, atoms, properties)
            assert_same(got, results(eager, atoms, properties))
            layout = model.neighborhood(
                AtomicGraph.from_atoms(atoms).with_neighbors(model.cutoff).edge_index, len(atoms))
            padded = hasattr(layout, "width")
            shape = (layout.dense, layout.shared, layout.width) if padded else None
            if step > 0 and (shape is None or shape[:2] == previous[:2]):  # the same layout kind
                assert compiled_graphs() == graphs, "recompiled for new sizes"
                if shape is not None:
                    widths_changed.append(shape[2] != previous[2])
            previous = shape
    assert compiled._energy_fn is not None  # still compiled: nothing fell back to eager
    assert not widths_changed or any(widths_changed), "no width change was tested"


@contextlib.contextmanager
def no_fallback():
    """Fail on the fallback warning (a compile failure would otherwise pass as eager results)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        yield


def test_compiled_painn_matches_eager_on_a_molecule_and_a_periodic_cell():
    check_compiled_matches_eager("painn", [(biphenyl_like(), ("energy", "forces")),
                                           (copper((2, 2, 2)), ("energy", "forces", "stress"))])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tp", "egnn"])
def test_compiled_tp_and_egnn_match_eager(name):
    check_compiled_matches_eager(name, [(biphenyl_like(), ("energy", "forces")),
                                        (copper((2, 2, 2)), ("energy", "forces", "stress"))])


@pytest.mark.slow
def test_compiled_md_follows_the_eager_trajectory():
    """20 VelocityVerlet steps with neighbour-list rebuilds: the same trajectory, compiled or not."""
    model = make_model("painn", cutoff=4.0)
    trajectories = []
    for compile in (False, True):
        atoms = biphenyl_like()
        maxwell_boltzmann(atoms, 1500, np.random.default_rng(1))
        calc = EqGNNCalculator(model, dtype="float64", skin=0.05, compile=compile)
        atoms.calc = calc
        VelocityVerlet(atoms, timestep=1.0 * units.fs).run(20)
        trajectories.append(atoms.get_positions())
        assert calc.neighbors.builds > 1
    np.testing.assert_allclose(trajectories[1], trajectories[0], rtol=0, atol=1e-8)


def test_a_failing_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    model = make_model("painn")
    atoms = biphenyl_like()
    calc = EqGNNCalculator(model, dtype="float64", compile=True)

    def broken(*args, **kwargs):
        raise RuntimeError("C++ compiler not found\n(long compiler log)")

    monkeypatch.setattr(calc._energy_fn, "_fn", broken)
    with pytest.warns(UserWarning, match="torch.compile failed.*C\\+\\+ compiler not found"):
        got = results(calc, atoms)
    assert calc._energy_fn is None
    assert_same(got, results(EqGNNCalculator(model, dtype="float64"), atoms))


def test_compile_must_be_a_bool():
    with pytest.raises(ValueError, match="compile must be True or False"):
        EqGNNCalculator(make_model("painn"), compile="auto")


def test_row_operators_give_eager_values_and_gradients_when_compiled():
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 3, dtype=torch.float64)
    gather_index = torch.randint(0, 5, (12,))
    scatter_index = torch.randint(0, 4, (12,))

    def f(x):
        return (scatter_rows(gather_rows(x, gather_index) * w, scatter_index, 4) ** 2).sum()

    eager_value = f(x)
    (eager_grad,) = torch.autograd.grad(eager_value, x)
    compiled = torch.compile(f, fullgraph=True)
    value = compiled(x)
    (grad,) = torch.autograd.grad(value, x)
    torch.testing.assert_close(value, eager_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-12, atol=1e-12)
    # the operators' own registrations (fake tensors, autograd) pass torch's checks
    from ase_eqgnn.indexing import _gather_rows_op, _scatter_rows_op

    torch.library.opcheck(_gather_rows_op, (x, gather_index))
    torch.library.opcheck(_scatter_rows_op, (w.requires_grad_(), scatter_index, 4))


@pytest.mark.slow
def test_eqgnn_md_compile_gives_the_eager_trajectory(tmp_path, monkeypatch):
    """``eqgnn-md --compile`` on the bundled alanine dipeptide: same frames as without it."""
    from ase.io import read

    from ase_eqgnn.cli import md as md_cli

    monkeypatch.chdir(tmp_path)
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        assert md_cli.main(["--steps", "20", "--interval", "10", "--dtype", "float64", "--no-progress",
                            "--traj", f"{name}.traj", "--log", f"{name}.csv", "--plot", f"{name}.png"]
                           + extra) == 0
    eager, compiled = read("eager.traj", ":"), read("compiled.traj", ":")
    assert len(eager) == len(compiled) == 3
    np.testing.assert_allclose(compiled[-1].positions, eager[-1].positions, rtol=0, atol=1e-8)
