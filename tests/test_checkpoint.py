"""Model files: round trip, atomic writes, and clear errors for bad files."""

import json
import os

import numpy as np
import pytest
import torch
from ase.build import bulk

from ase_eqgnn import keys
from ase_eqgnn.checkpoint import (FORMAT_VERSION, CheckpointError, load_checkpoint_dict, load_model,
                                  save_model)
from ase_eqgnn.graph import AtomicGraph
from ase_eqgnn.models import build_model

SMALL = {"egnn": dict(features=8, layers=2), "painn": dict(features=8, layers=2),
         "tp": dict(features=4, layers=2, l_max=1, radial_hidden=8)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread avoids OpenMP wake-up costs on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make(name, dtype=torch.float64):
    torch.manual_seed(3)
    model = build_model(name, ["Cu", "Ni"], 4.0, **SMALL[name])
    with torch.no_grad():
        model.scale.fill_(1.7)
        model.shift.fill_(-0.3)
        model.E0.copy_(torch.tensor([-2.5, -4.1]))
    return model.to(dtype)


def evaluate(model):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[0] = 28
    atoms.rattle(0.05, seed=0)
    g = AtomicGraph.from_atoms(atoms, dtype=model.dtype).with_neighbors(model.cutoff)
    return model(g, stress=True)


@pytest.mark.parametrize("name", ["egnn", "painn", "tp"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_is_identical(tmp_path, name, dtype):
    model = make(name, dtype)
    path = tmp_path / "model.pt"
    save_model(model, path, metadata={"dataset": "EMT Cu", "epochs": 3})
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.dtype == dtype and not loaded.training
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    a, b = evaluate(model), evaluate(loaded)
    for k in (keys.ENERGY, keys.FORCES, keys.STRESS):
        assert torch.equal(a[k], b[k]), k
    # Nothing left behind by the atomic write.
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_file_contents(tmp_path):
    model = make("painn")
    path = tmp_path / "m.pt"
    save_model(model, path, metadata={"note": "ünïcode ok"})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "ase_eqgnn" and raw["format_version"] == FORMAT_VERSION
    assert isinstance(raw["package_version"], str)
    config = json.loads(raw["config_json"])
    assert config["units"] == {"energy": "eV", "length": "Å"}
    assert config["metadata"] == {"note": "ünïcode ok"}
    assert {"name", "species", "cutoff", "hparams"} <= set(config)
    ckpt = load_checkpoint_dict(path)
    assert ckpt["config"]["species"] == [28, 29]
    assert set(ckpt["state_dict"]) == set(model.state_dict())


def test_overwrite_is_atomic(tmp_path):
    path = tmp_path / "model.pt"
    save_model(make("egnn"), path)
    first = path.read_bytes()

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    model = make("egnn")
    with pytest.raises(ValueError, match="JSON"):
        save_model(model, path, metadata={"bad": Boom()})
    assert path.read_bytes() == first
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_truncated_and_corrupt_files(tmp_path):
    path = tmp_path / "model.pt"
    save_model(make("egnn"), path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*truncated, corrupt"):
        load_model(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not a model at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_model(garbage)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_model(empty)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")


def test_foreign_files(tmp_path):
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(CheckpointError, match="not an ase_eqgnn model file"):
        load_model(tensor_file)
    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, other)
    with pytest.raises(CheckpointError, match="not an ase_eqgnn model file"):
        load_model(other)
    # A whole pickled module (what torch.save(model) writes) is refused, not executed.
    pickled = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(CheckpointError, match="pickled.pt"):
        load_model(pickled)


def _rewrite(path, target, **changes):
    raw = torch.load(path, weights_only=True)
    raw.update(changes)
    torch.save(raw, target)
    return target


def test_future_version_and_damaged_fields(tmp_path):
    path = tmp_path / "model.pt"
    save_model(make("painn"), path)
    future = _rewrite(path, tmp_path / "future.pt", format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match="newer.*Upgrade ase_eqgnn"):
        load_model(future)
    bad_json = _rewrite(path, tmp_path / "json.pt", config_json="{not json")
    with pytest.raises(CheckpointError, match="unreadable config"):
        load_model(bad_json)
    raw = torch.load(path, weights_only=True)
    state = dict(raw["state_dict"])
    state.pop(next(iter(state)))
    missing = _rewrite(path, tmp_path / "state.pt", state_dict=state)
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_model(missing)
    config = json.loads(raw["config_json"])
    config["hparams"]["no_such_knob"] = 1
    unknown = _rewrite(path, tmp_path / "hp.pt", config_json=json.dumps(config))
    with pytest.raises(CheckpointError, match="no_such_knob"):
        load_model(unknown)
    config = json.loads(raw["config_json"])
    config["units"] = {"energy": "kcal/mol", "length": "Å"}
    units = _rewrite(path, tmp_path / "units.pt", config_json=json.dumps(config))
    with pytest.raises(CheckpointError, match="units"):
        load_model(units)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
    np.testing.assert_equal(FORMAT_VERSION, 1)
