"""Training with a wall-time budget (issue 20): by default the learning rate anneals over the budget
and only the budget ends the run; an explicit max_epochs still caps it; a resumed run continues the
schedule where it stopped."""

import csv
import math

import pytest
import torch
import yaml

from ase_eqgnn.cli.train import build_parser
from ase_eqgnn.train import TrainConfig, train
from ase_eqgnn.train.config import DEFAULT_MAX_EPOCHS, DEFAULT_PATIENCE, config_from_args
from ase_eqgnn.train.resume import load_train_state
from ase_eqgnn.train.trainer import Trainer

from test_train import cu_file, tiny_config  # noqa: F401  (the fixture and the tiny run's settings)

LR, MIN_LR = 5e-3, 1e-6


def rows(out):
    with open(out / "log.csv") as f:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def next_lr(out):
    """The learning rate the schedule set for the epoch after the last one saved."""
    return load_train_state(str(out / "last.pt"))["optimizer"]["param_groups"][0]["lr"]


def test_the_defaults_resolve_by_the_budget():
    plain, budget = TrainConfig(data="x.npz"), TrainConfig(data="x.npz", max_time=60)
    assert (plain.schedule_kind, plain.epoch_limit, plain.early_stopping_patience) == \
        ("plateau", DEFAULT_MAX_EPOCHS, DEFAULT_PATIENCE)
    assert (budget.schedule_kind, budget.epoch_limit, budget.early_stopping_patience) == ("cosine", None, 0)
    given = TrainConfig(data="x.npz", max_time=60, max_epochs=7, patience=3, scheduler="plateau")
    assert (given.schedule_kind, given.epoch_limit, given.early_stopping_patience) == ("plateau", 7, 3)
    # eqgnn-train: a flag given is explicit, an absent one leaves the default to the budget
    parser = build_parser()
    assert config_from_args(parser.parse_args(["--max-time", "60"])).epoch_limit is None
    capped = config_from_args(parser.parse_args(["--max-time", "60", "--max-epochs", "100"]))
    assert capped.epoch_limit == 100
    with pytest.raises(ValueError, match="max_epochs must be >= 1"):
        TrainConfig(data="x.npz", max_epochs=0)


def test_a_budgeted_run_uses_its_whole_budget_and_ends_annealed(cu_file, tmp_path, monkeypatch):  # noqa: F811
    # unbudgeted defaults that would stop this run after 2 epochs (the real ones: 100 and 30)
    import ase_eqgnn.train.config as config

    monkeypatch.setattr(config, "DEFAULT_MAX_EPOCHS", 2)
    monkeypatch.setattr(config, "DEFAULT_PATIENCE", 1)
    budget = 5.0
    result = train(tiny_config(cu_file, tmp_path, lr=LR, min_lr=MIN_LR, max_time=budget))
    assert result.stop_reason == "max_time"
    log = rows(tmp_path)
    assert len(log) >= 4
    assert log[-1]["time"] > 0.7 * budget  # not stopped early by max_epochs or patience
    lrs = [r["lr"] for r in log]
    assert lrs[0] == pytest.approx(LR)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # the rate set for the next epoch is the cosine's at the fraction of the budget used when the last
    # epoch ended (the log's time is taken just after the schedule's step: 50 ms of slack), so it
    # follows the time actually used, however long saving took on a loaded machine
    p = min(1.0, max(0.0, log[-1]["time"] - 0.05) / budget)
    assert next_lr(tmp_path) <= MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * p))
    assert next_lr(tmp_path) < 0.25 * LR  # (p > 0.7 above: annealed most of the way)


def test_an_explicit_max_epochs_caps_a_budgeted_run(cu_file, tmp_path):  # noqa: F811
    result = train(tiny_config(cu_file, tmp_path, lr=LR, min_lr=MIN_LR, max_time=600, max_epochs=3))
    assert result.stop_reason == "max_epochs" and result.epochs == 3
    assert [r["lr"] for r in rows(tmp_path)][0] == pytest.approx(LR)
    assert next_lr(tmp_path) == pytest.approx(MIN_LR)  # annealed over the 3 epochs it was given


def test_a_resumed_budgeted_run_continues_its_schedule(cu_file, tmp_path):  # noqa: F811
    budget = 5.0
    cfg = tiny_config(cu_file, tmp_path, lr=LR, min_lr=MIN_LR, max_time=budget)
    stopped = []

    def interrupt_after_three(line):
        if line.split()[:2] == ["epoch", "3"]:
            stopped.append(line)
            raise KeyboardInterrupt  # as Ctrl-C: last.pt of epoch 3 is written

    trainer = Trainer(cfg, log=interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    trainer.close()
    assert stopped and len(rows(tmp_path)) == 3
    state = load_train_state(str(tmp_path / "last.pt"))
    lr_then, used = next_lr(tmp_path), state["elapsed"]
    assert 0 < state["scheduler"]["time_progress"] < 1 and lr_then < LR

    result = train(cfg)  # the same config again: resumes
    log = rows(tmp_path)
    assert result.stop_reason == "max_time" and len(log) > 3
    assert log[3]["lr"] == pytest.approx(lr_then)  # continued, not restarted at LR
    assert all(a >= b for a, b in zip([r["lr"] for r in log], [r["lr"] for r in log][1:]))
    assert log[-1]["time"] > 0.7 * budget and log[-1]["time"] - used < budget  # one budget in all
    assert next_lr(tmp_path) < 0.2 * LR


def test_the_budget_is_annealed_over_after_warm_up():
    from ase_eqgnn.train.schedule import EpochScheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = EpochScheduler(opt, "cosine", lr=1.0, max_epochs=None, warmup_epochs=2, min_lr=0.0,
                           max_time=100.0)
    lrs = []
    for epoch, elapsed in enumerate([10.0, 20.0, 60.0, 100.0]):  # warm-up ends at 20 s
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(epoch, 0.0, elapsed)
    lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0], abs=1e-12)  # half of the 80 s left at 60 s
    with pytest.raises(ValueError, match="needs max_epochs or max_time"):
        EpochScheduler(opt, "cosine", lr=1.0, max_epochs=None)


def test_a_run_resumed_with_a_budget_keeps_the_schedule_it_started_with(cu_file, tmp_path):  # noqa: F811
    train(tiny_config(cu_file, tmp_path, max_epochs=2))  # no budget: the plateau schedule
    result = train(tiny_config(cu_file, tmp_path, max_epochs=3, max_time=600))
    assert result.epochs == 3
    assert "plateau" in load_train_state(str(tmp_path / "last.pt"))["scheduler"]
    with pytest.raises(ValueError, match="trained with the plateau learning-rate schedule"):
        Trainer(tiny_config(cu_file, tmp_path, max_epochs=4, scheduler="cosine"))
    # a run folder of the days when the defaults were plateau / 100 epochs / patience 30 resumes
    old = tiny_config(cu_file, tmp_path, max_epochs=100, patience=30, scheduler="plateau")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old.to_dict()))
    assert train(tiny_config(cu_file, tmp_path, max_epochs=4)).epochs == 4


# ----------------------------------------------------------------- the optional final stage (off by default)
def test_final_stage_schedule():
    from ase_eqgnn.train.schedule import EpochScheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = EpochScheduler(opt, "cosine", lr=1.0, max_epochs=None, min_lr=0.0, max_time=100.0,
                           final_fraction=0.25, final_lr=0.01)
    lrs, final = [], []
    for epoch, elapsed in enumerate([37.5, 74.0, 76.0, 100.0]):
        lrs.append(opt.param_groups[0]["lr"])
        final.append(sched.final_stage(epoch))
        opt.step()
        sched.step(epoch, 0.0, elapsed)
    # the cosine runs over the first 75 s (half of it at 37.5 s), then the constant final lr
    assert lrs == pytest.approx([1.0, 0.5, 0.5 * (1 + math.cos(math.pi * 74 / 75)), 0.01])
    assert final == [False, False, False, True]
    assert TrainConfig(data="x.npz").final_fraction == 0  # off by default
    with pytest.raises(ValueError, match="final stage .* needs the cosine schedule"):
        TrainConfig(data="x.npz", final_fraction=0.2)  # no budget: plateau


def test_a_final_stage_raises_the_energy_weight_at_a_low_lr(cu_file, tmp_path):  # noqa: F811
    lines = []
    cfg = tiny_config(cu_file, tmp_path, lr=LR, max_time=4.0, final_fraction=0.4, final_lr=2e-4,
                      final_energy_weight=1000.0)
    result = train(cfg, log=lines.append)
    log = rows(tmp_path)
    start = [int(line.split()[4].rstrip(":")) for line in lines if line.startswith("final stage from epoch")]
    assert len(start) == 1 and 2 <= start[0] <= len(log)
    lrs = [r["lr"] for r in log]
    assert all(lr == pytest.approx(2e-4) for lr in lrs[start[0] - 1:])
    first = lrs[:start[0] - 1]  # the cosine, annealed before the stage
    assert first[0] == pytest.approx(LR) and all(a >= b for a, b in zip(first, first[1:]))
    assert result.best_epoch >= start[0]  # best.pt is the final stage's best
    assert load_train_state(str(tmp_path / "last.pt"))["final_stage"] is True
    resumed = Trainer(tiny_config(cu_file, tmp_path, lr=LR, max_time=8.0, final_fraction=0.4,
                                  final_lr=2e-4, final_energy_weight=1000.0))
    assert resumed.in_final_stage and resumed.weights.energy == 1000.0
    resumed.close()


def test_without_a_model_the_default_recipe_is_trained(cu_file, tmp_path):  # noqa: F811
    """``eqgnn-train --data F --max-time T``: the body-ordered tp recipe, its batch size, learning
    rate and warm-up; naming a family gives that family's own defaults; flags still win."""
    parser = build_parser()
    cfg = config_from_args(parser.parse_args(["--data", str(cu_file), "--max-time", "60"]))
    assert cfg.model is None and cfg.model_name == "tp"
    assert (cfg.effective_batch_size, cfg.effective_lr, cfg.effective_warmup_epochs) == (5, 5e-3, 2)
    trainer = Trainer(TrainConfig(data=str(cu_file), out=str(tmp_path / "run"), cutoff=3.0,
                                  progress=False, num_threads=1))
    hp = trainer.model.config["hparams"]
    assert (trainer.model.config["name"], hp["correlation"], hp["sh_l_max"], hp["layers"],
            hp["features"], hp["l_max"]) == ("tp", 3, 3, 2, 32, 1)
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 5e-3
    # hyper-parameters without a model adjust the recipe; a named family keeps its own defaults
    small = TrainConfig(data="x.npz", hparams={"features": 8})
    assert small.model_hparams["features"] == 8 and small.model_hparams["correlation"] == 3
    painn = config_from_args(parser.parse_args(["--data", "x.npz", "--model", "painn"]))
    assert painn.model_hparams == {} and (painn.effective_batch_size, painn.effective_lr) == (8, 1e-3)
    given = config_from_args(parser.parse_args(["--data", "x.npz", "--batch-size", "3", "--lr", "1e-4"]))
    assert (given.effective_batch_size, given.effective_lr, given.model_name) == (3, 1e-4, "tp")
    # the recipe was measured on all-atom data: a CG run without a model trains PaiNN as before
    cg = TrainConfig(data="x.npz", cg_map="ala2-5bead")
    assert (cg.model_name, cg.model_hparams, cg.effective_batch_size) == ("painn", {}, 8)


def test_the_shipped_recipe_file_spells_out_the_default():
    from pathlib import Path

    from ase_eqgnn.train.config import DEFAULT_RECIPE, load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "training/configs/small_data_tp.yaml")
    assert (cfg.model, cfg.hparams, cfg.batch_size, cfg.lr, cfg.warmup_epochs) == tuple(
        DEFAULT_RECIPE[k] for k in ("model", "hparams", "batch_size", "lr", "warmup_epochs"))
