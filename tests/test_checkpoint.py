"""Model files: round trip, atomic writes, integrity digest, clear errors for bad or hostile files."""

import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk

from ase_eqgnn import keys
from ase_eqgnn.checkpoint import (FORMAT_VERSION, HPARAM_BOUNDS, MAX_PARAMETERS, CheckpointError,
                                  CheckpointWarning, load_checkpoint_dict, load_model, payload_digest,
                                  probe_state_shapes, save_model, write_checkpoint)
from ase_eqgnn.graph import AtomicGraph
from ase_eqgnn.models import build_model

SMALL = {"egnn": dict(features=8, layers=2), "painn": dict(features=8, layers=2),
         "tp": dict(features=4, layers=2, l_max=1, radial_hidden=8)}
DOMAIN = {"Ni-Ni": 2.31, "Ni-Cu": 2.28, "Cu-Cu": 2.35}



def make(name, dtype=torch.float64, domain=None):
    torch.manual_seed(3)
    model = build_model(name, ["Cu", "Ni"], 4.0, **SMALL[name])
    with torch.no_grad():
        model.scale.fill_(1.7)
        model.shift.fill_(-0.3)
        model.E0.copy_(torch.tensor([-2.5, -4.1]))
    model.domain = domain
    return model.to(dtype)


def evaluate(model):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.numbers[0] = 28
    atoms.rattle(0.05, seed=0)
    g = AtomicGraph.from_atoms(atoms, dtype=model.dtype).with_neighbors(model.cutoff)
    return model(g, stress=True)


def _rewrite(path, target, seal=True, config=None, edit=None, **changes):
    """A copy of model file ``path`` with fields changed (``edit`` changes the loaded dict, ``config``
    the parsed config JSON), re-sealed with a valid digest as a forger would (``seal=False``: the old
    digest is kept)."""
    raw = torch.load(path, weights_only=True)
    raw.update(changes)
    if edit is not None:
        edit(raw)
    if config is not None:
        cfg = json.loads(raw["config_json"])
        config(cfg)
        raw["config_json"] = json.dumps(cfg)
    if seal:
        write_checkpoint(raw, target)
    else:
        torch.save(raw, target)
    return target


def _edit_state(name, fn):
    def change(raw):
        state = dict(raw["state_dict"])
        state[name] = fn(state[name].clone())
        raw["state_dict"] = state
    return change


# -- round trip and layout ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["egnn", "painn", "tp"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_is_identical(tmp_path, name, dtype):
    model = make(name, dtype, domain=DOMAIN)
    path = tmp_path / "model.pt"
    save_model(model, path, metadata={"dataset": "EMT Cu", "epochs": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a current file loads without any warning
        loaded = load_model(path)
    assert loaded.config == model.config and loaded.domain == DOMAIN
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
    assert raw["format"] == "ase_eqgnn" and raw["format_version"] == 2 and FORMAT_VERSION == 3  # plain files stay 2
    assert isinstance(raw["package_version"], str)
    assert raw["sha256"] == payload_digest(raw) and len(raw["sha256"]) == 64
    config = json.loads(raw["config_json"])
    assert config["units"] == {"energy": "eV", "length": "Å"}
    assert config["metadata"] == {"note": "ünïcode ok"}
    assert config["domain"] is None  # a model never trained has no record
    assert {"name", "species", "cutoff", "hparams"} <= set(config)
    ckpt = load_checkpoint_dict(path)
    assert ckpt["config"]["species"] == [28, 29]
    assert set(ckpt["state_dict"]) == set(model.state_dict())


def test_digest_covers_names_dtypes_shapes_bytes_and_config():
    base = {"config_json": '{"cutoff": 4.0}', "state_dict": {"w": torch.arange(6.0).reshape(2, 3)}}
    digest = payload_digest(base)
    variants = [
        {**base, "config_json": '{"cutoff": 4.5}'},
        {**base, "state_dict": {"v": base["state_dict"]["w"]}},
        {**base, "state_dict": {"w": base["state_dict"]["w"].double()}},
        {**base, "state_dict": {"w": base["state_dict"]["w"].reshape(3, 2)}},
        {**base, "state_dict": {"w": base["state_dict"]["w"] + 1e-7}},
        {**base, "extra": None},
    ]
    assert len({digest} | {payload_digest(v) for v in variants}) == len(variants) + 1
    # the order of dict entries and a stale digest entry do not matter
    assert payload_digest({"state_dict": base["state_dict"], "config_json": base["config_json"],
                           "sha256": "stale"}) == digest


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
    model.domain = {"Cu-Cu": -1.0}
    with pytest.raises(ValueError, match="Cu-Cu"):
        save_model(model, path)
    assert path.read_bytes() == first
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


# -- damage ---------------------------------------------------------------------------------------
def test_flipped_bytes_in_the_weights_are_detected(tmp_path):
    model = make("painn", torch.float32)
    path = tmp_path / "model.pt"
    save_model(model, path)
    data = bytearray(path.read_bytes())
    weight = model.state_dict()["representation.messages.0.phi.0.weight"]  # 64 float32: 256 bytes
    start = data.find(weight.numpy().tobytes())
    assert start > 0
    for k in range(start + 96, start + 160):  # 64 bytes in the middle of the tensor
        data[k] ^= 0xFF
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    # torch itself reads the file without complaint and gets a different weight ...
    raw = torch.load(damaged, weights_only=True)
    changed = raw["state_dict"]["representation.messages.0.phi.0.weight"]
    assert not torch.equal(changed, weight)
    # ... the digest does not match
    with pytest.raises(CheckpointError, match="damaged.pt.*does not match its SHA-256 digest"):
        load_model(damaged)


def test_edited_config_and_stripped_digest_are_detected(tmp_path):
    path = tmp_path / "model.pt"
    save_model(make("painn"), path)
    data = path.read_bytes()
    assert data.count(b'"cutoff": 4.0') == 1
    edited = tmp_path / "edited.pt"
    edited.write_bytes(data.replace(b'"cutoff": 4.0', b'"cutoff": 5.0'))  # same length
    with pytest.raises(CheckpointError, match="edited.pt.*digest"):
        load_model(edited)
    raw = torch.load(path, weights_only=True)
    del raw["sha256"]
    stripped = tmp_path / "stripped.pt"
    torch.save(raw, stripped)
    with pytest.raises(CheckpointError, match="stripped.pt.*no valid integrity digest"):
        load_model(stripped)
    # a tensor changed after sealing (the old digest kept)
    stale = _rewrite(path, tmp_path / "stale.pt", seal=False,
                     edit=_edit_state("scale", lambda t: t * 2))
    with pytest.raises(CheckpointError, match="stale.pt.*digest"):
        load_model(stale)


def test_file_of_the_old_format_loads_with_one_warning(tmp_path):
    """Format version 1 (before the digest and the domain record): the layout written by hand."""
    model = make("painn")
    old = tmp_path / "old.pt"
    torch.save({"format": "ase_eqgnn", "format_version": 1, "package_version": "0.1.0",
                "config_json": json.dumps({**model.config, "units": {"energy": "eV", "length": "Å"}}),
                "state_dict": {k: v.clone() for k, v in model.state_dict().items()}}, old)
    with pytest.warns(CheckpointWarning) as record:
        loaded = load_model(old)
    assert len(record) == 1
    message = str(record[0].message)
    assert "old.pt" in message and "no integrity digest" in message and "training-domain" in message
    assert loaded.domain is None
    a, b = evaluate(model), evaluate(loaded)
    assert torch.equal(a[keys.FORCES], b[keys.FORCES])
    # saving it again gives a current file that loads silently
    save_model(loaded, tmp_path / "new.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(tmp_path / "new.pt")


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
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_model(tmp_path)  # a folder
    os.mkfifo(tmp_path / "pipe.pt")
    with pytest.raises(CheckpointError, match="pipe.pt.*not a regular file"):
        load_model(tmp_path / "pipe.pt")  # refused, not read (which would wait forever)


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
    unknown = _rewrite(path, tmp_path / "hp.pt", config=lambda c: c["hparams"].update(no_such_knob=1))
    with pytest.raises(CheckpointError, match="no_such_knob"):
        load_model(unknown)
    units = _rewrite(path, tmp_path / "units.pt",
                     config=lambda c: c.update(units={"energy": "kcal/mol", "length": "Å"}))
    with pytest.raises(CheckpointError, match="units"):
        load_model(units)
    no_domain = _rewrite(path, tmp_path / "nodomain.pt", config=lambda c: c.pop("domain"))
    with pytest.raises(CheckpointError, match="lacks.*domain"):
        load_model(no_domain)


# -- hostile configs: refused before anything large is allocated -----------------------------------
@pytest.fixture
def builds(monkeypatch):
    """Records, for every build_model call during a load, where its tensors would be allocated."""
    import ase_eqgnn.models as models

    real, calls = models.build_model, []

    def spy(*args, **kwargs):
        calls.append(torch.empty(1).device.type)  # "meta" inside the shape probe
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "build_model", spy)
    return calls


@pytest.mark.parametrize("features", [6000, 10**9, 10**400, -4, 2.5, True, "64"])
def test_huge_or_malformed_hyper_parameters_are_refused_before_building(tmp_path, builds, features):
    path = tmp_path / "model.pt"
    save_model(make("painn"), path)
    tampered = _rewrite(path, tmp_path / "tampered.pt",
                        config=lambda c: c["hparams"].update(features=features))
    with pytest.raises(CheckpointError, match="tampered.pt.*features must be an integer in"):
        load_model(tampered)
    assert builds == []  # the model was never built, not even on the meta device


def test_config_that_disagrees_with_the_tensors_is_caught_on_the_meta_device(tmp_path, builds):
    path = tmp_path / "model.pt"
    save_model(make("painn"), path)  # features 8
    tampered = _rewrite(path, tmp_path / "tampered.pt",
                        config=lambda c: c["hparams"].update(features=512))
    with pytest.raises(CheckpointError, match="shape .* the config implies"):
        load_model(tampered)
    assert builds == ["meta"]  # only the shape probe ran, which allocates nothing
    builds.clear()
    deeper = _rewrite(path, tmp_path / "deeper.pt", config=lambda c: c["hparams"].update(layers=16))
    with pytest.raises(CheckpointError, match=r"deeper.pt' does not match its config \(missing tensors"):
        load_model(deeper)
    assert builds == ["meta"]
    # within every bound but far too large as a whole
    assert HPARAM_BOUNDS["features"][1] == 1024 and HPARAM_BOUNDS["layers"][1] == 32
    builds.clear()
    huge = _rewrite(path, tmp_path / "huge.pt", config=lambda c: c["hparams"].update(features=1024,
                                                                                    layers=32))
    with pytest.raises(CheckpointError, match=f"more than the {MAX_PARAMETERS:,}"):
        load_model(huge)
    assert builds == ["meta"]


@pytest.mark.parametrize("name", ["egnn", "painn", "tp"])
def test_shape_probe_matches_the_real_model_for_every_family(name):
    model = make(name)
    probed = probe_state_shapes(lambda: build_model(name, ["Cu", "Ni"], 4.0, **SMALL[name]),
                                l_max=SMALL[name].get("l_max"))
    assert probed is not None, "the family can no longer be built on the meta device"
    real = model.state_dict()
    assert list(probed) == list(real)
    for key, (shape, dtype) in probed.items():
        assert shape == real[key].shape, key
        assert dtype.is_floating_point == real[key].dtype.is_floating_point, key


def test_body_ordered_tp_is_probed_and_its_orders_are_bounded(tmp_path, builds):
    torch.manual_seed(3)
    model = build_model("tp", ["Cu", "Ni"], 4.0, features=4, layers=2, l_max=1, sh_l_max=2,
                        correlation=3, radial_hidden=8)
    path = tmp_path / "body.pt"
    save_model(model, path)
    loaded = load_model(path)
    assert builds == ["meta", "cpu"]  # the shape probe builds this family too
    assert torch.equal(evaluate(loaded)["energy"], evaluate(model)["energy"])
    for key, value in [("correlation", 50), ("correlation", 0), ("correlation", 2.0),
                       ("sh_l_max", 9), ("sh_l_max", -1)]:
        builds.clear()
        tampered = _rewrite(path, tmp_path / "orders.pt",
                            config=lambda c: c["hparams"].update({key: value}))
        with pytest.raises(CheckpointError, match=f"orders.pt.*{key} must be an integer in"):
            load_model(tampered)
        assert builds == []  # refused before anything was built
    builds.clear()
    wider = _rewrite(path, tmp_path / "wider.pt", config=lambda c: c["hparams"].update(sh_l_max=3))
    with pytest.raises(CheckpointError, match="wider.pt.*does not match its config"):
        load_model(wider)
    assert builds == ["meta"]


@pytest.mark.parametrize("cutoff", [float("nan"), float("inf"), -4.0, 0.0, 1e6, 10**400, "4.0", None])
def test_absurd_cutoffs_are_refused(tmp_path, cutoff):
    path = tmp_path / "model.pt"
    save_model(make("egnn"), path)
    tampered = _rewrite(path, tmp_path / "cut.pt", config=lambda c: c.update(cutoff=cutoff))
    with pytest.raises(CheckpointError, match="cut.pt.*cutoff must be a finite number of Å"):
        load_model(tampered)


@pytest.mark.parametrize("species", [[29, 29], [0, 29], [999], [], "Cu", [28, 29, 30]])
def test_bad_species_are_refused(tmp_path, species):
    path = tmp_path / "model.pt"
    save_model(make("egnn"), path)
    tampered = _rewrite(path, tmp_path / "sp.pt", config=lambda c: c.update(species=species))
    with pytest.raises(CheckpointError, match="sp.pt"):
        load_model(tampered)


@pytest.mark.parametrize("tensor, value", [("representation.embedding.weight", float("nan")),
                                           ("head.layers.0.weight", float("inf")),
                                           ("scale", float("-inf")), ("E0", float("nan"))])
def test_non_finite_weights_and_buffers_are_refused(tmp_path, tensor, value):
    model = make("egnn")
    path = tmp_path / "model.pt"
    save_model(model, path)
    if tensor not in model.state_dict():  # keep the test honest if a name changes
        tensor = next(k for k in model.state_dict() if k.endswith("weight"))

    def poison(t):
        t.view(-1)[0] = value
        return t

    bad = _rewrite(path, tmp_path / "bad.pt", edit=_edit_state(tensor, poison))
    with pytest.raises(CheckpointError, match=f"bad.pt.*{tensor}.*NaN or infinite"):
        load_model(bad)


def test_mixed_or_odd_dtypes_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    save_model(make("egnn"), path)
    mixed = _rewrite(path, tmp_path / "mixed.pt", edit=_edit_state("scale", lambda t: t.float()))
    with pytest.raises(CheckpointError, match="float32 or all float64"):
        load_model(mixed)
    integer = _rewrite(path, tmp_path / "int.pt", edit=_edit_state("E0", lambda t: t.long()))
    with pytest.raises(CheckpointError, match="int.pt.*'E0' is torch.int64"):
        load_model(integer)  # would otherwise be cast silently into the float buffer


def test_broadcast_views_and_deep_nesting_are_refused_without_expanding_them(tmp_path):
    """Content a model file never holds, which would cost memory or stack to walk naively."""
    import threading

    path = tmp_path / "model.pt"
    save_model(make("egnn"), path)
    # E0 as a 10^12-element view of one stored float: 8 TB if made contiguous
    huge = _rewrite(path, tmp_path / "view.pt", seal=False,
                    edit=_edit_state("E0", lambda t: t[:1].expand(10**12)))
    with pytest.raises(CheckpointError, match="view.pt.*not plain data stored in full"):
        load_model(huge)

    def save_deep():  # torch.save itself recurses: a deep stack for writing only
        import sys
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(50_000)
        try:
            nested = []
            for _ in range(5000):
                nested = [nested]
            _rewrite(path, tmp_path / "deep.pt", seal=False, deep=nested)
        finally:
            sys.setrecursionlimit(limit)

    size = threading.stack_size(256 << 20)
    try:
        writer = threading.Thread(target=save_deep)
        writer.start()
        writer.join()
    finally:
        threading.stack_size(size)
    with pytest.raises(CheckpointError, match="deep.pt.*nested deeper than"):
        load_model(tmp_path / "deep.pt")
    nested_json = _rewrite(path, tmp_path / "json.pt", config_json="[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="json.pt.*unreadable config"):
        load_model(nested_json)


@pytest.mark.parametrize("domain, problem", [
    ({"Cu-Cu": -1.0}, "Cu-Cu"), ({"Cu-Cu": float("nan")}, "Cu-Cu"), ({"Cu-Cu": 9.0}, "cutoff"),
    ({"Cu-Ni": 2.0}, "lighter element first"), ({"Cu-Zn": 2.0}, "Cu-Zn"), ([2.0], "dict"),
    ({"Cu-Cu": "2.0"}, "Cu-Cu"), ({"Cu-Cu": 10**400}, "Cu-Cu")])
def test_bad_domain_records_are_refused(tmp_path, domain, problem):
    path = tmp_path / "model.pt"
    save_model(make("egnn"), path)
    tampered = _rewrite(path, tmp_path / "dom.pt", config=lambda c: c.update(domain=domain))
    with pytest.raises(CheckpointError, match=f"dom.pt.*{problem}"):
        load_model(tampered)


def test_loading_leaves_the_random_state_alone(tmp_path):
    path = tmp_path / "model.pt"
    save_model(make("tp"), path)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    load_model(path)
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
    assert math.isfinite(MAX_PARAMETERS) and np.isfinite(HPARAM_BOUNDS["avg_num_neighbors"][1])


def test_huge_integer_where_a_float_belongs_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    save_model(make("painn"), path)
    tampered = _rewrite(path, tmp_path / "avg.pt",
                        config=lambda c: c["hparams"].update(avg_num_neighbors=10**400))
    with pytest.raises(CheckpointError, match="avg.pt.*avg_num_neighbors must be a number"):
        load_model(tampered)
