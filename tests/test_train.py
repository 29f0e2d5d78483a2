"""Tests of the training stack: config, statistics, the loop, resume, eqgnn-eval, DDP.

Everything runs tiny PaiNN models on a few EMT Cu frames in float64 with one thread, so the file
takes well under a minute or two on a busy 2-core machine.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from ase_eqgnn.data import Frame, read_dataset
from ase_eqgnn.train import TrainConfig, TrainStateError, Trainer, fit_e0, load_config, train
from ase_eqgnn.train.config import config_from_args
from ase_eqgnn.train.data import EpochBatches, build_samples, dataset_statistics, force_rms
from ase_eqgnn.train.resume import load_train_state
from ase_eqgnn.train.schedule import EpochScheduler

ROOT = pathlib.Path(__file__).resolve().parents[1]
CU = ROOT / "training" / "data" / "cu_emt.extxyz"
TINY = dict(model="painn", cutoff=3.0, hparams={"features": 8, "layers": 1, "n_radial": 4},
            batch_size=4,
            dtype="float64", progress=False, num_threads=1, lr=5e-3, valid_fraction=0.25)


@pytest.fixture(scope="module")
def cu_file(tmp_path_factory) -> pathlib.Path:
    """24 EMT Cu frames (energy, forces, stress) in an extxyz file."""
    import ase.io

    frames = read_dataset(CU, index="::6")[:24]
    path = tmp_path_factory.mktemp("data") / "cu24.extxyz"
    ase.io.write(path, [f.to_atoms() for f in frames])
    return path


def tiny_config(data, out, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "data": str(data), "out": str(out), **kw})


def write_yaml(path, cfg: TrainConfig) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict()))


# ------------------------------------------------------------------------------------------ config
def test_unknown_config_key_names_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: x.npz\nmax_epoch: 3\n")
    with pytest.raises(ValueError, match="'max_epoch'") as info:
        load_config(path)
    assert "max_epochs" in str(info.value)  # the valid keys are listed


def test_bad_values_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="scheduler"):
        TrainConfig(scheduler="step")
    with pytest.raises(ValueError, match="valid_fraction"):
        TrainConfig(valid_fraction=1.5)
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: many\n")
    with pytest.raises(ValueError, match="batch_size"):
        load_config(path)


def test_flags_override_yaml(tmp_path):
    from ase_eqgnn.cli.train import build_parser

    path = tmp_path / "c.yaml"
    path.write_text("data: a.npz\nlr: 1e-4\nmax_epochs: 5\nhparams: {features: 32}\nprogress: true\n")
    args = build_parser().parse_args([str(path), "--max-epochs", "7", "--hparams", "{features: 16}",
                                      "--no-progress", "--max-time", "none", "--model", "egnn"])
    cfg = config_from_args(args, args.config)
    assert cfg.max_epochs == 7 and cfg.hparams == {"features": 16} and cfg.progress is False
    assert cfg.lr == pytest.approx(1e-4) and cfg.data == "a.npz"  # from the file ("1e-4" is a YAML string)
    assert cfg.model == "egnn" and cfg.max_time is None
    assert build_parser().parse_args([]).config is None  # no config file: defaults


def test_cosine_schedule_warms_up_then_decays():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = EpochScheduler(opt, "cosine", lr=1.0, max_epochs=12, warmup_epochs=2, min_lr=0.01)
    lrs = []
    for e in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(e, 0.0)
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] < 0.05


def test_cosine_schedule_follows_the_time_budget():
    """With max_time, the cosine anneals by the fraction of the budget used when that is larger."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = EpochScheduler(opt, "cosine", lr=1.0, max_epochs=1000, min_lr=0.0, max_time=100.0)
    sched.step(0, 0.0, elapsed=50.0)  # half the budget after one epoch of a thousand
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5, abs=1e-6)
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = EpochScheduler(opt2, "cosine", lr=1.0, max_epochs=1000, min_lr=0.0, max_time=100.0)
    resumed.load_state_dict(state)
    for s_ in (sched, resumed):
        s_.step(1, 0.0, elapsed=99.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(opt2.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] < 1e-3
    untimed = EpochScheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "cosine",
                             lr=1.0, max_epochs=1000, min_lr=0.0)
    untimed.step(0, 0.0, elapsed=50.0)  # no budget: elapsed time is ignored
    assert untimed.lambda_lr.optimizer.param_groups[0]["lr"] > 0.99


def test_resumed_cosine_follows_a_raised_budget():
    """Raising max_epochs or max_time on resume gives the learning rate a run started with it has."""
    def sgd():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    one_go = sgd()
    one_go_sched = EpochScheduler(one_go, "cosine", lr=1.0, max_epochs=4, min_lr=0.0)
    one_go.step()
    one_go_sched.step(0, 0.0)
    short = sgd()
    short_sched = EpochScheduler(short, "cosine", lr=1.0, max_epochs=1, min_lr=0.0)
    short.step()
    short_sched.step(0, 0.0)
    assert short.param_groups[0]["lr"] == pytest.approx(0.0)  # its one-epoch schedule has ended
    resumed = sgd()
    resumed.load_state_dict(short.state_dict())
    EpochScheduler(resumed, "cosine", lr=1.0, max_epochs=4, min_lr=0.0).load_state_dict(
        short_sched.state_dict(), elapsed=1.0)
    expected = 0.5 * (1 + math.cos(math.pi / 4))
    assert resumed.param_groups[0]["lr"] == pytest.approx(one_go.param_groups[0]["lr"]) == pytest.approx(expected)

    timed = sgd()
    timed_sched = EpochScheduler(timed, "cosine", lr=1.0, max_epochs=1000, min_lr=0.0, max_time=100.0)
    timed.step()
    timed_sched.step(0, 0.0, elapsed=50.0)
    longer = sgd()
    longer.load_state_dict(timed.state_dict())
    EpochScheduler(longer, "cosine", lr=1.0, max_epochs=1000, min_lr=0.0, max_time=200.0).load_state_dict(
        timed_sched.state_dict(), elapsed=50.0)  # a quarter of the new budget used
    assert longer.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------------------------------ data
def test_e0_least_squares_recovers_known_values():
    rng = np.random.default_rng(0)
    e0 = {1: -13.6, 6: -1029.8, 8: -2041.3}
    frames = []
    for _ in range(30):
        numbers = rng.choice([1, 6, 8], size=rng.integers(3, 9))
        pos = np.stack(np.meshgrid(*[np.arange(3)] * 3), -1).reshape(-1, 3)[: len(numbers)] * 2.0
        energy = sum(e0[int(z)] for z in numbers) + rng.normal(scale=1e-3)
        frames.append(Frame(positions=pos.astype(float), numbers=numbers,
                            energy=energy, forces=rng.normal(scale=0.5, size=(len(numbers), 3))))
    samples = build_samples(frames, cutoff=2.5)
    fitted = fit_e0(samples, [1, 6, 8])
    np.testing.assert_allclose(fitted, [e0[1], e0[6], e0[8]], atol=2e-3)
    e0_arr, scale, shift = dataset_statistics(samples, [1, 6, 8])
    all_f = np.concatenate([f.forces for f in frames])
    assert scale == pytest.approx(np.sqrt((all_f ** 2).mean())) == force_rms(samples)
    assert shift == 0.0
    given, _, _ = dataset_statistics(samples, [1, 6, 8], e0={1: 0.0, 6: 1.0, 8: 2.0})
    np.testing.assert_array_equal(given, [0.0, 1.0, 2.0])


def test_cached_graphs_match_fresh_neighbour_lists(cu_file):
    from ase_eqgnn.graph import AtomicGraph

    from ase_eqgnn.graph import edge_vectors

    def pairs(g):  # (i, j, r_ij rounded): what the model sees
        vec = edge_vectors(g.positions, g.cell, g.batch, g.edge_index, g.shifts)
        return {(int(i), int(j), *np.round(v.tolist(), 8)) for (i, j), v in zip(g.edge_index.T, vec)}

    frames = read_dataset(cu_file, index=":5")
    for f, s in zip(frames, build_samples(frames, cutoff=3.0, chunk=2)):
        g = AtomicGraph.from_arrays(f.positions, f.numbers, f.cell, f.pbc).with_neighbors(3.0)
        assert pairs(g) == pairs(s.graph)
        # cached positions are wrapped into the cell: the same atoms up to whole lattice vectors
        frac = np.linalg.solve(f.cell.T, (s.graph.positions.numpy() - f.positions).T)
        np.testing.assert_allclose(frac, np.round(frac), atol=1e-9)


def test_batches_are_sharded_and_deterministic():
    one = EpochBatches(10, 4, seed=3)
    one.set_epoch(2)
    full = [idx for idx, _ in one]
    shards = []
    for rank in range(3):
        b = EpochBatches(10, 4, seed=3, rank=rank, world_size=3)
        b.set_epoch(2)
        shards.append(list(b))
    for k, batch in enumerate(full):
        got = sorted(i for r in range(3) for i, w in [shards[r][k]] if w > 0 for i in i)
        assert got == sorted(batch)
    assert shards[2][-1][1] == 0.0  # the last global batch has 2 frames: rank 2 gets a weight-0 placeholder


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def reference_run(cu_file, tmp_path_factory):
    """An uninterrupted 4-epoch run (the reference for the resume tests)."""
    out = tmp_path_factory.mktemp("ref")
    result = train(tiny_config(cu_file, out, max_epochs=4))
    return out, result


def test_training_decreases_loss_and_writes_run_directory(reference_run, cu_file):
    from ase.build import bulk
    from ase_eqgnn.calculator import EqGNNCalculator

    out, result = reference_run
    for name in ("config.yaml", "last.pt", "best.pt", "log.csv", "learning_curve.png", "parity_valid.png",
                 "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp"))
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    for col in ("epoch", "time", "lr", "train_loss", "valid_loss", "energy_mae", "energy_rmse",
                "forces_mae", "forces_rmse", "stress_mae"):
        assert col in rows[0]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["valid_loss"]) < float(rows[0]["valid_loss"])
    assert load_config(out / "config.yaml") == tiny_config(cu_file, out, max_epochs=4)
    assert result.stop_reason == "max_epochs" and result.epochs == 4

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.calc = EqGNNCalculator(str(out / "best.pt"))
    assert np.isfinite(atoms.get_potential_energy()) and atoms.get_forces().shape == (32, 3)
    assert atoms.get_stress().shape == (6,)


def _final_state(out):
    return load_train_state(str(out / "last.pt"))


def _assert_same_state(a, b):
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), f"optimizer {pid}.{k} differs"
    wall = {"warmup_seconds"}  # a measured duration (it places a budget's cosine), not state
    assert ({k: v for k, v in a["scheduler"].items() if k not in wall}
            == {k: v for k, v in b["scheduler"].items() if k not in wall})
    assert a["epoch"] == b["epoch"] and a["best_epoch"] == b["best_epoch"]
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


def test_resume_is_bit_identical(reference_run, cu_file, tmp_path):
    ref_out, _ = reference_run
    train(tiny_config(cu_file, tmp_path, max_epochs=2))
    assert _final_state(tmp_path)["epoch"] == 2
    result = train(tiny_config(cu_file, tmp_path, max_epochs=4))  # a new Trainer on the same directory
    assert result.epochs == 4
    _assert_same_state(_final_state(ref_out), _final_state(tmp_path))
    assert len(list(csv.DictReader(open(tmp_path / "log.csv")))) == 4


def test_sigkill_mid_epoch_then_resume(reference_run, cu_file, tmp_path):
    """Really kill a training process; nothing is corrupt and the resumed run equals the reference."""
    ref_out, _ = reference_run
    cfg = tmp_path / "run.yaml"
    write_yaml(cfg, tiny_config(cu_file, tmp_path / "run", max_epochs=4))
    cmd = [sys.executable, "-m", "ase_eqgnn.cli.train", str(cfg)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    last = tmp_path / "run" / "last.pt"
    deadline = time.time() + 120
    try:
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)  # into the second epoch
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert last.exists(), proc.stderr.read().decode()[-2000:]
    state = load_train_state(str(last))  # not corrupt
    killed_at = state["epoch"]
    print(f"killed after epoch {killed_at}")
    assert 1 <= killed_at <= 4
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(rows) in (killed_at, killed_at - 1)  # log.csv is written right after last.pt
    from ase_eqgnn.checkpoint import load_model
    load_model(tmp_path / "run" / "best.pt")

    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    if killed_at < 4:
        assert "resuming" in done.stdout
    _assert_same_state(_final_state(ref_out), _final_state(tmp_path / "run"))


def test_corrupt_last_pt_is_a_clear_error(cu_file, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(TrainStateError, match="corrupt"):
        Trainer(tiny_config(cu_file, tmp_path, max_epochs=1))


def test_resume_with_another_model_is_refused(reference_run, cu_file, tmp_path):
    ref_out, _ = reference_run
    shutil.copy(ref_out / "last.pt", tmp_path / "last.pt")
    with pytest.raises(ValueError, match="hparams"):
        Trainer(tiny_config(cu_file, tmp_path, max_epochs=5, hparams={"features": 16, "layers": 1}))


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from ase_eqgnn.train.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda:0")
    with pytest.raises(ValueError, match="nproc_per_node"):
        resolve_device("auto", local_rank=1)
    with pytest.raises(ValueError, match="cuda:3 does not exist"):
        resolve_device("cuda:3")
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")


def test_max_time_stops_the_run(cu_file, tmp_path):
    result = train(tiny_config(cu_file, tmp_path, max_epochs=1000, max_time=1.0))
    assert result.stop_reason == "max_time" and 1 <= result.epochs < 1000


def test_cli_with_defaults_on_an_npz(tmp_path):
    """``eqgnn-train --data train.npz --out run1`` (only the epoch count cut down)."""
    from ase_eqgnn.cli.train import main

    with np.load(ROOT / "training" / "data" / "ala2_test.npz") as d:
        np.savez(tmp_path / "train.npz", **{k: d[k][:12] if d[k].ndim and k != "atomic_numbers" else d[k]
                                            for k in ("pos", "atomic_numbers", "energy", "forces")})
    out = tmp_path / "run1"
    assert main(["--data", str(tmp_path / "train.npz"), "--out", str(out), "--max-epochs", "1",
                 "--no-progress", "--num-threads", "1"]) == 0
    cfg = load_config(out / "config.yaml")
    assert cfg.model is None and cfg.max_epochs == 1 and (out / "best.pt").exists()
    from ase_eqgnn.checkpoint import load_model

    trained = load_model(out / "best.pt").config  # the default recipe: body-ordered tp
    assert trained["name"] == "tp" and trained["hparams"]["correlation"] == 3
    assert main(["--data", str(tmp_path / "missing.npz"), "--out", str(out / "x")]) == 2


# ------------------------------------------------------------------------------------------ eqgnn-eval
def test_eqgnn_eval_matches_direct_computation(reference_run, cu_file, tmp_path):
    from ase_eqgnn import keys
    from ase_eqgnn.checkpoint import load_model
    from ase_eqgnn.cli.evaluate import main
    from ase_eqgnn.graph import AtomicGraph

    ref_out, _ = reference_run
    js, png = tmp_path / "m.json", tmp_path / "parity.png"
    assert main([str(ref_out / "best.pt"), str(cu_file), "--json", str(js), "--plot", str(png),
                 "--batch-size", "5"]) == 0
    got = json.loads(js.read_text())
    assert {"energy_mae", "energy_rmse", "forces_mae", "forces_rmse", "stress_mae", "stress_rmse",
            "n_frames"} <= set(got)
    assert png.stat().st_size > 0

    model = load_model(ref_out / "best.pt")
    e_err, f_err, s_err = [], [], []
    for f in read_dataset(cu_file):
        g = AtomicGraph.from_arrays(f.positions, f.numbers, f.cell, f.pbc).with_neighbors(model.cutoff)
        out = model(g, forces=True, stress=True)
        e_err.append((float(out[keys.ENERGY][0]) - f.energy) / f.n_atoms)
        f_err.append(out[keys.FORCES].numpy() - f.forces)
        s = out[keys.STRESS][0].numpy()
        s_err.append(np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]) - f.stress)
    e_err, f_err = np.array(e_err), np.concatenate(f_err)
    assert got["n_frames"] == 24
    assert got["energy_mae"] == pytest.approx(1e3 * np.abs(e_err).mean(), rel=1e-9)
    assert got["energy_rmse"] == pytest.approx(1e3 * np.sqrt((e_err ** 2).mean()), rel=1e-9)
    assert got["forces_mae"] == pytest.approx(1e3 * np.abs(f_err).mean(), rel=1e-9)
    assert got["forces_rmse"] == pytest.approx(1e3 * np.sqrt((f_err ** 2).mean()), rel=1e-9)
    # stress: the 3x3 tensor's 9 components (off-diagonals twice) -> compare the MAE of the Voigt form
    s_err = np.array(s_err)
    full_mae = 1e3 * (np.abs(s_err[:, :3]).sum() + 2 * np.abs(s_err[:, 3:]).sum()) / (9 * len(s_err))
    assert got["stress_mae"] == pytest.approx(full_mae, rel=1e-9)


def test_eqgnn_eval_unknown_model_is_an_error(cu_file, capsys):
    from ase_eqgnn.cli.evaluate import main

    assert main(["no-such-model", str(cu_file)]) == 2
    assert "no-such-model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_torchrun_two_processes_match_one(cu_file, tmp_path):
    """2 gloo processes with the same global batch give the single-process weights."""
    single = tmp_path / "single"
    train(tiny_config(cu_file, single, max_epochs=2, device="cpu"))
    cfg = tmp_path / "ddp.yaml"
    write_yaml(cfg, tiny_config(cu_file, tmp_path / "ddp", max_epochs=2, device="cpu"))
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([torchrun, "--standalone", "--nproc_per_node", "2", "-m",
                             "ase_eqgnn.cli.train", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two workers
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _final_state(single), _final_state(tmp_path / "ddp")
    for k, v in a["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(b["model"][k], v, rtol=1e-6, atol=1e-9)
    for ra, rb in zip(a["history"], b["history"]):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-6)
        assert rb["forces_mae"] == pytest.approx(ra["forces_mae"], rel=1e-6)


def test_training_on_the_reference_layout_gives_the_same_run(cu_file, tmp_path):
    """layout="reference" (the plain edge list) trains the same model as the fast layout: the same
    losses and weights after two epochs, up to float64 round-off."""
    results = {}
    for layout in ("auto", "reference"):
        out = tmp_path / layout
        hp = {"features": 8, "layers": 2, "n_radial": 4}
        result = train(tiny_config(cu_file, out, max_epochs=2, layout=layout, hparams=hp))
        results[layout] = (result, _final_state(out))
    (ra, sa), (rb, sb) = results["auto"], results["reference"]
    for row_a, row_b in zip(ra.history, rb.history):
        assert row_a["train_loss"] == pytest.approx(row_b["train_loss"], rel=1e-9)
    for k in sa["model"]:
        torch.testing.assert_close(sa["model"][k], sb["model"][k], rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="layout must be one of auto, reference"):
        TrainConfig(layout="padded")
