"""Tests of the back-mapping trainer (ase_eqgnn.cg.train) on the shared training machinery.

Tiny VAEs on 24 alanine-dipeptide frames, one thread; each run takes a second or two.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ase_eqgnn.cg.backmap import BackMapper, load_checkpoint
from ase_eqgnn.cg.model import BackmapConfig
from ase_eqgnn.cg.train import export_model, load_trajectories, resolve_config, train_backmap
from ase_eqgnn.train import RunFolderError, TrainStateError
from ase_eqgnn.train.resume import load_train_state

ROOT = Path(__file__).resolve().parents[1]
ALA2 = str(ROOT / "training/data/ala2_test.h5")
SMALL = BackmapConfig(features=16, latent_dim=4, encoder_layers=2, prior_layers=1, decoder_layers=2,
                      n_rbf=8)
TINY = {"traj": [ALA2], "max_frames": 24, "batch_size": 6, "val_eval_frames": 4, "threads": 1,
        "model": SMALL.to_dict()}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _state(run: Path):
    return load_train_state(str(run / "last.pt"))


def test_run_folder_and_resume(tmp_path):
    cfg = {**TINY, "out": str(tmp_path / "run")}
    best = train_backmap(cfg, progress=False, max_epochs=1)
    run = tmp_path / "run"
    assert best == run / "best.pt"
    assert sorted(os.listdir(run)) == ["best.pt", "config.yaml", "last.pt", "learning_curve.png", "log.csv"]
    assert _state(run)["epoch"] == 1 and _state(run)["kind"] == "backmap"
    train_backmap(cfg, progress=False, max_epochs=2)
    second = _state(run)
    assert second["epoch"] == 2 and len(second["history"]) == 2
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"time", "lr", "beta", "train_loss", "val_loss", "val_recon_rmsd"} <= set(rows[0])
    mapper = BackMapper.load(best)  # best.pt is a back-mapping model file
    assert mapper.n_beads == 5
    with pytest.raises(ValueError, match="unknown config key"):
        train_backmap({**cfg, "learning_rate": 1.0})


def test_resume_continues_exactly(tmp_path):
    """2 epochs in one go and 1 + 1 epochs in two runs end with identical weights, EMA and optimizer."""
    train_backmap({**TINY, "out": str(tmp_path / "once")}, progress=False, max_epochs=2)
    train_backmap({**TINY, "out": str(tmp_path / "twice")}, progress=False, max_epochs=1)
    train_backmap({**TINY, "out": str(tmp_path / "twice")}, progress=False, max_epochs=2)
    a, b = _state(tmp_path / "once"), _state(tmp_path / "twice")
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k}"
    for pid, st in a["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k])
    strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert a["history"][1]["lr"] < a["history"][0]["lr"]  # cosine decay from the shared schedule


def test_init_from_fine_tunes(tmp_path):
    """A run started with init_from begins at the given weights, with the new loss weights."""
    base = train_backmap({**TINY, "out": str(tmp_path / "base")}, progress=False, max_epochs=1)
    start = load_checkpoint(base)["model_state"]
    tuned = train_backmap({**TINY, "out": str(tmp_path / "tuned"), "init_from": str(base), "lr": 1e-12,
                           "lr_min": 1e-12, "loss": {"sample_heavy_recon": 1.0}},
                          progress=False, max_epochs=1)
    end = _state(tmp_path / "tuned")["model"]
    for k, v in start.items():  # a vanishing learning rate: the weights are the ones loaded
        assert torch.allclose(v, end[k], atol=1e-8), k
    assert "val_sample_heavy_msd" in (tmp_path / "tuned" / "log.csv").read_text()
    assert tuned.is_file()
    with pytest.raises(ValueError, match="model does not match"):
        train_backmap({**TINY, "out": str(tmp_path / "bad"), "init_from": str(base),
                       "model": {**SMALL.to_dict(), "features": SMALL.features + 4}},
                      progress=False, max_epochs=1)
    with pytest.raises(ValueError, match="CG map differs"):
        train_backmap({**TINY, "out": str(tmp_path / "bad2"), "init_from": str(base), "map": "residue"},
                      progress=False, max_epochs=1)


def _snapshot(folder: Path):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_foreign_or_other_run_folder_is_refused_untouched(tmp_path):
    run = tmp_path / "run"
    train_backmap({**TINY, "out": str(run)}, progress=False, max_epochs=1)
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    with pytest.raises(TrainStateError, match="lr"):  # same folder, another config
        train_backmap({**TINY, "out": str(run), "lr": 1e-4}, progress=False, max_epochs=2)
    os.unlink(run / "last.pt")  # a finished run without its last.pt is not overwritten
    del before["last.pt"]
    with pytest.raises(RunFolderError, match="last.pt is missing"):
        train_backmap({**TINY, "out": str(run)}, progress=False, max_epochs=2)
    assert _snapshot(run) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("traj: mine.h5\n")
    with pytest.raises(RunFolderError, match="other"):
        train_backmap({**TINY, "out": str(other)}, progress=False, max_epochs=1)
    assert _snapshot(other) == {"config.yaml": b"traj: mine.h5\n"}


def test_moved_run_folder_resumes(tmp_path):
    train_backmap({**TINY, "out": str(tmp_path / "run")}, progress=False, max_epochs=1)
    shutil.move(tmp_path / "run", tmp_path / "moved")
    train_backmap({**TINY, "out": str(tmp_path / "moved") + "/"}, progress=False, max_epochs=2)
    assert _state(tmp_path / "moved")["epoch"] == 2


def test_export_model_keeps_the_weights(tmp_path):
    best = train_backmap({**TINY, "out": str(tmp_path / "run")}, progress=False, max_epochs=1)
    export_model(best, tmp_path / "exported.pt", {"rmsd": 0.5})
    a, b = load_checkpoint(best), load_checkpoint(tmp_path / "exported.pt")
    for k, v in a["model_state"].items():
        assert torch.equal(v, b["model_state"][k]), k
    xyz, _ = load_trajectories([ALA2])
    m_a, m_b = BackMapper.load(best), BackMapper.load(tmp_path / "exported.pt")
    cg = m_a.cg_map.bead_positions(xyz[:3])
    np.testing.assert_array_equal(m_a.backmap(cg, seed=0), m_b.backmap(cg, seed=0))
    assert m_b.meta["test_metrics"] == {"rmsd": 0.5}


@pytest.mark.parametrize("key, value", [("batch_size", 0), ("lr", float("nan")), ("max_time", -1.0),
                                        ("val_fraction", 1.0), ("ema_decay", 1.0), ("stride", 1.5),
                                        ("dtype", "float16"), ("model", 3), ("patience", -2)])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        resolve_config({**TINY, key: value})


def test_library_leaves_the_allocator_alone(tmp_path, monkeypatch):
    from ase_eqgnn import heap

    def refuse():
        raise AssertionError("the back-mapping trainer changed the process's allocator")

    monkeypatch.setattr(heap, "keep_freed_memory", refuse)
    train_backmap({**TINY, "out": str(tmp_path / "run")}, progress=False, max_epochs=1)
