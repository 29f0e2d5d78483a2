"""The potential trainer's run folder: what it refuses, what it resumes, what it records and leaves alone.

Tiny PaiNN models on 12 EMT Cu frames (float64, one thread); a refused run never reads the data.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest
import torch

from ase_eqgnn.checkpoint import save_model
from ase_eqgnn.data import read_dataset
from ase_eqgnn.models import build_model
from ase_eqgnn.train import RunFolderError, TrainConfig, Trainer, TrainStateError, train
from ase_eqgnn.train.resume import load_train_state
from ase_eqgnn.train.run_dir import dump_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(model="painn", cutoff=3.0, hparams={"features": 8, "layers": 1, "n_radial": 4},
            batch_size=4,
            dtype="float64", progress=False, num_threads=1, lr=5e-3, valid_fraction=0.25)


@pytest.fixture(scope="module")
def cu_file(tmp_path_factory) -> pathlib.Path:
    """12 EMT Cu frames (energy, forces, stress) in an extxyz file."""
    import ase.io

    frames = read_dataset(ROOT / "training" / "data" / "cu_emt.extxyz", index="::12")[:12]
    path = tmp_path_factory.mktemp("data") / "cu12.extxyz"
    ase.io.write(path, [f.to_atoms() for f in frames])
    return path


def config(data, out, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "data": str(data), "out": str(out), **kw})


def snapshot(folder: pathlib.Path):
    """Every file under ``folder`` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(cu_file, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    train(config(cu_file, out, max_epochs=1))
    return out


def _plant_other_model(out: pathlib.Path) -> None:
    out.mkdir()
    save_model(build_model("egnn", ["H", "O"], 4.0, hparams={"features": 8, "layers": 1}), out / "best.pt")


def _plant_finished_run_without_last(out: pathlib.Path, finished: pathlib.Path) -> None:
    shutil.copytree(finished, out)
    os.unlink(out / "last.pt")


FOREIGN = {
    "hand-written config.yaml": lambda out, _: (out.mkdir(), (out / "config.yaml").write_text(
        "# my settings\nmodel: egnn\nmax_epochs: 3\n")),
    "another model's best.pt": lambda out, _: _plant_other_model(out),
    "notes": lambda out, _: (out.mkdir(), (out / "notes.txt").write_text("do not lose me")),
    "a finished run without last.pt": lambda out, finished: _plant_finished_run_without_last(out, finished),
    "a stale temporary beside notes": lambda out, _: (out.mkdir(), (out / "last.pt.abcd1234.tmp").write_bytes(
        b"x"), (out / "notes.txt").write_text("mine")),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_a_folder_that_is_not_this_run_is_refused_untouched(case, cu_file, finished_run, tmp_path):
    out = tmp_path / "out"
    FOREIGN[case](out, finished_run)
    before = snapshot(tmp_path)
    with pytest.raises(RunFolderError, match=str(out)):
        Trainer(config(cu_file, out, max_epochs=2))
    assert snapshot(tmp_path) == before


def test_an_out_path_that_is_a_file_or_a_broken_link_is_refused(cu_file, tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(RunFolderError, match="is not a folder"):
        Trainer(config(cu_file, tmp_path / "out"))
    assert (tmp_path / "out").read_text() == "a file"
    (tmp_path / "link").symlink_to(tmp_path / "nowhere" / "run")  # a broken link: not created through
    with pytest.raises(RunFolderError, match="is not a folder"):
        Trainer(config(cu_file, tmp_path / "link"))
    assert not (tmp_path / "nowhere").exists()


def test_another_config_is_refused_and_a_damaged_last_pt_named(cu_file, finished_run, tmp_path):
    before = snapshot(finished_run)
    with pytest.raises(TrainStateError, match="lr: 0.005 -> 0.001"):
        Trainer(config(cu_file, finished_run, lr=1e-3))
    assert snapshot(finished_run) == before
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainStateError, match="corrupt"):
        Trainer(config(cu_file, tmp_path))


def test_every_spelling_of_the_folder_and_a_moved_folder_resume(cu_file, tmp_path, monkeypatch):
    """run, ./run, run/, the absolute path and the folder moved elsewhere continue one run, which
    ends exactly where an uninterrupted run ends."""
    reference = train(config(cu_file, tmp_path / "reference", max_epochs=5))
    monkeypatch.chdir(tmp_path)
    train(config(cu_file, "run", max_epochs=1))
    for epochs, out in ((2, "./run"), (3, "run/"), (4, str(tmp_path / "run"))):
        assert train(config(cu_file, out, max_epochs=epochs)).epochs == epochs
    (tmp_path / "elsewhere").mkdir()
    shutil.move(tmp_path / "run", tmp_path / "elsewhere" / "moved")
    result = train(config(cu_file, os.path.join("elsewhere", "moved"), max_epochs=5))
    assert result.epochs == 5 and len(result.history) == 5
    a = load_train_state(str(tmp_path / "reference" / "last.pt"))
    b = load_train_state(str(tmp_path / "elsewhere" / "moved" / "last.pt"))
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k}"
    assert [r["train_loss"] for r in reference.history] == [r["train_loss"] for r in result.history]


def test_a_run_killed_in_its_first_epoch_starts_again(cu_file, tmp_path):
    """Its folder holds only the config.yaml the trainer wrote and a temporary: not a foreign folder."""
    cfg = config(cu_file, tmp_path / "run", max_epochs=1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(dump_config(cfg.to_dict()))
    (tmp_path / "run" / "last.pt.k9x2m1q0.tmp").write_bytes(b"half a checkpoint")
    assert train(cfg).epochs == 1
    assert not list((tmp_path / "run").glob("*.tmp"))
    # the same folder with its config.yaml edited by hand is someone's file: refused
    other = tmp_path / "edited"
    other.mkdir()
    (other / "config.yaml").write_text(dump_config(cfg.to_dict()).replace("lr: 0.005", "lr: 0.002"))
    with pytest.raises(RunFolderError):
        Trainer(config(cu_file, other, max_epochs=1))


def _brute_force_shortest(frames, cutoff):
    """{"H-O": Å} from all pairs of each (non-periodic) frame closer than the cutoff."""
    from ase.data import chemical_symbols

    best = {}
    for f in frames:
        pos, z = np.asarray(f.positions), np.asarray(f.numbers)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        i, j = np.triu_indices(len(z), k=1)
        for a, b, dist in zip(z[i], z[j], d[i, j]):
            if dist < cutoff:
                key = "-".join(chemical_symbols[x] for x in sorted((int(a), int(b))))
                best[key] = min(best.get(key, np.inf), float(dist))
    return best


def test_best_pt_records_the_training_datas_shortest_distances(tmp_path, monkeypatch):
    """The EMA model saved in best.pt carries, per element pair, the shortest distance in the
    training frames (not the validation frames), checked against all pairs by brute force."""
    import ase_eqgnn.train.trainer as trainer_module
    from ase_eqgnn.checkpoint import load_checkpoint_dict, load_model

    with np.load(ROOT / "training" / "data" / "ala2_test.npz") as d:
        np.savez(tmp_path / "ala2.npz", **{k: d[k][:12] if d[k].ndim and k != "atomic_numbers" else d[k]
                                           for k in ("pos", "atomic_numbers", "energy", "forces")})
    saved = []

    def spy(model, path, metadata=None):
        saved.append(model)
        return save_model(model, path, metadata=metadata)

    monkeypatch.setattr(trainer_module, "save_model", spy)
    cfg = config(tmp_path / "ala2.npz", tmp_path / "run", max_epochs=1, cutoff=2.5, stress_weight=0.0)
    trainer = Trainer(cfg)
    trainer.fit()
    expected = _brute_force_shortest([s.graph for s in trainer.train_samples], cutoff=2.5)
    assert {"H-H", "H-C", "C-C", "C-N", "C-O"} <= set(expected)  # ordered by atomic number
    assert saved and all(m is trainer.ema.module for m in saved)
    assert saved[-1].domain.keys() == expected.keys()
    for key, dist in expected.items():
        assert saved[-1].domain[key] == pytest.approx(dist, abs=2e-6), key
    # the validation frames are not training data: leaving them out changes the record
    everything = _brute_force_shortest([s.graph for s in trainer.train_samples + trainer.valid_samples], 2.5)
    assert everything != expected or len(trainer.valid_samples) == 0
    # The file keeps the record once save_model/load_model store it (the checkpoint module's job):
    if "domain" in load_checkpoint_dict(tmp_path / "run" / "best.pt")["config"]:
        assert load_model(tmp_path / "run" / "best.pt").domain == saved[-1].domain


def test_the_library_leaves_the_allocator_alone_unless_asked(cu_file, tmp_path, monkeypatch):
    from ase_eqgnn import heap

    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1) or True)
    Trainer(config(cu_file, tmp_path / "a"))
    assert calls == [] and TrainConfig().keep_freed_memory is False
    Trainer(config(cu_file, tmp_path / "b", keep_freed_memory=True))
    assert calls == [1]
