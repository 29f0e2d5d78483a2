"""The shared epoch loop (ase_eqgnn.train.loop) on a one-weight toy task: stopping rules, files, resume.

The toy task fits y = 2x with one weight; its validation losses are scripted, and time comes from a
fake clock, so every rule is checked exactly and nothing is timed.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import ase_eqgnn.train.loop as loop_module
from ase_eqgnn.train.ema import make_ema
from ase_eqgnn.train.loop import EpochLoop, EpochTask
from ase_eqgnn.train.resume import load_train_state
from ase_eqgnn.train.run_dir import RunDirectory
from ase_eqgnn.train.schedule import EpochScheduler


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Toy(EpochTask):
    """One weight w, loss (w - 2)^2; each epoch takes ``epoch_seconds`` of fake time."""

    def __init__(self, valid_losses, clock, epoch_seconds=10.0, killed_at=None):
        self.valid_losses, self.clock, self.epoch_seconds = list(valid_losses), clock, epoch_seconds
        self.killed_at = killed_at
        self.best_saved_at = []

    def train_epoch(self, loop):
        if loop.epoch == self.killed_at:
            raise KeyboardInterrupt  # as if the process were killed here
        w = loop.model.weight
        loss = ((w - 2.0) ** 2).sum()
        loop.optimizer.zero_grad()
        loss.backward()
        loop.optimizer.step()
        loop.ema.update_parameters(loop.model)
        self.clock.now += self.epoch_seconds
        return {"train_loss": np.float64(loss.item())}, loop.time_is_up()  # a NumPy number on purpose

    def validate(self, loop, train):
        loss = self.valid_losses[loop.epoch]
        return loss, {"valid_loss": loss, "w": loop.ema.module.weight.detach()[0, 0]}

    def save_best(self, loop, row):
        self.best_saved_at.append(loop.epoch)

    def extra_state(self):
        return {"toy": "state"}


def make_loop(out, clock_task_args=None, **rules):
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = EpochScheduler(opt, "cosine", 0.1, rules.get("max_epochs", 10), min_lr=0.0,
                           max_time=rules.get("max_time"))
    run = RunDirectory(str(out), "toy", {"lr": 0.1, "out": str(out)})
    return EpochLoop(run, model, opt, sched, make_ema(model, 0.5), log=lambda msg: None, **rules)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(loop_module.time, "perf_counter", fake)
    return fake


def test_early_stopping_best_and_files(tmp_path, clock):
    losses = [3.0, 2.0, 2.5, 2.6, 2.7, 1.0]
    loop = make_loop(tmp_path / "run", max_epochs=10, patience=2)
    task = Toy(losses, clock)
    assert loop.run(task) == "early_stopping"
    assert loop.epoch == 4 and loop.best_epoch == 1 and loop.best_loss == 2.0
    assert task.best_saved_at == [1, 2]  # after epochs 1 and 2 (counted from 1)
    state = load_train_state(str(tmp_path / "run" / "last.pt"))  # weights_only: plain numbers only
    assert state["kind"] == "toy" and state["toy"] == "state" and state["epoch"] == 4
    assert type(state["history"][0]["train_loss"]) is float and type(state["history"][0]["w"]) is float
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert [float(r["time"]) for r in rows] == [10.0, 20.0, 30.0, 40.0]


def test_max_time_stops_before_an_epoch_that_would_not_fit(tmp_path, clock):
    loop = make_loop(tmp_path / "run", max_epochs=100, max_time=35.0)
    assert loop.run(Toy([5.0 - e for e in range(100)], clock)) == "max_time"
    assert loop.epoch == 3  # 30 s done; a fourth 10 s epoch would end at 40 s > 35 s


def test_a_new_loop_on_the_run_folder_continues(tmp_path, clock):
    losses = [5.0 - e for e in range(6)]
    once = make_loop(tmp_path / "once", max_epochs=6)
    once.run(Toy(losses, clock))
    first = make_loop(tmp_path / "twice", max_epochs=6)
    with pytest.raises(KeyboardInterrupt):
        first.run(Toy(losses, clock, killed_at=3))
    second = make_loop(tmp_path / "twice", max_epochs=6)
    state = second.run_dir.check()
    second.load_state_dict(state)
    assert second.epoch == 3 and second.elapsed == 30.0
    assert second.run(Toy(losses, clock)) == "max_epochs"
    assert torch.equal(once.model.weight, second.model.weight)
    assert torch.equal(once.ema.module.weight, second.ema.module.weight)
    assert [r["lr"] for r in once.history] == [r["lr"] for r in second.history]
