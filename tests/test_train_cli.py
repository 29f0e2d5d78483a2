"""``eqgnn-train`` as a user runs it: --help, --threads, and a table of mistakes that must each end with
exit code 2, one line ``eqgnn-train: error: ...``, no traceback and every existing file unchanged.

The table runs through ``main`` in this process, and through the installed console script in a
subprocess (a few seconds each, mostly importing torch: five cases in the fast suite, all under
``-m slow``); a refused run stops before reading any data.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from ase_eqgnn.cli.train import build_parser, main
from ase_eqgnn.data import read_dataset
from ase_eqgnn.train import TrainConfig, train
from ase_eqgnn.train.config import config_from_args

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--model", "painn", "--cutoff", "3.0", "--hparams", "{features: 8, layers: 1, n_radial: 4}", "--batch-size", "4",
              "--no-progress", "--threads", "1", "--max-epochs", "1", "--valid-fraction", "0.25"]


def eqgnn_train() -> list:
    script = shutil.which("eqgnn-train", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "ase_eqgnn.cli.train"]


@pytest.fixture(scope="module")
def cu_file(tmp_path_factory) -> pathlib.Path:
    import ase.io

    frames = read_dataset(ROOT / "training" / "data" / "cu_emt.extxyz", index="::12")[:8]
    path = tmp_path_factory.mktemp("data") / "cu.extxyz"
    ase.io.write(path, [f.to_atoms() for f in frames])
    return path


@pytest.fixture(scope="module")
def earlier_run(cu_file, tmp_path_factory) -> pathlib.Path:
    """A finished one-epoch run, as ``eqgnn-train --data cu.extxyz --out prev`` leaves it."""
    out = tmp_path_factory.mktemp("earlier") / "prev"
    train(TrainConfig(data=str(cu_file), out=str(out), cutoff=3.0, batch_size=4, max_epochs=1,
                      hparams={"features": 8, "layers": 1, "n_radial": 4}, progress=False,
                      num_threads=1, valid_fraction=0.25))
    return out


def snapshot(folder: pathlib.Path):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# case: (files to plant {path: text}, arguments, a fragment the error line must hold)
MISTAKES = {
    "bad YAML": ({"c.yaml": "data: [cu.extxyz\nlr: 1\n"}, ["c.yaml"], "not valid YAML"),
    "unknown config key": ({"c.yaml": "data: cu.extxyz\nmax_epoch: 3\n"}, ["c.yaml"], "'max_epoch'"),
    "missing config file": ({}, ["nope.yaml"], "nope.yaml"),
    "config is a folder": ({"cfgdir/x.txt": "x"}, ["cfgdir"], "not a file"),
    "missing data file": ({}, ["--data", "missing.extxyz"], "missing.extxyz"),
    "unreadable data file": ({"junk.extxyz": "junk junk\n"}, ["--data", "junk.extxyz"], "junk.extxyz"),
    "endless data (a device)": ({}, ["--data", "/dev/zero", "--format", "extxyz"], "not a regular file"),
    "NaN learning rate": ({}, ["--lr", "nan"], "lr"),
    "not a number": ({}, ["--max-epochs", "abc"], "max_epochs"),
    "unknown model": ({}, ["--model", "transformer"], "model"),
    "absurd cutoff": ({}, ["--cutoff", "1e6"], "cutoff"),
    "absurd model size": ({}, ["--hparams", "{features: 100000}"], "features"),
    "model too large in total": ({}, ["--hparams", "{features: 1024, layers: 32}"], "weights"),
    "absent GPU": ({}, ["--device", "cuda:7"], "cuda"),
    "unknown element in e0": ({}, ["--e0", "{Zz: 1.0}"], "Zz"),
    "out holds notes": ({"notes/notes.txt": "mine"}, ["--out", "notes"], "notes"),
    "out is a file": ({"out.txt": "mine"}, ["--out", "out.txt"], "is not a folder"),
    "hand-written config.yaml in out": ({"mine/config.yaml": "data: cu.extxyz\nmax_epochs: 1\n"},
                                        ["mine/config.yaml", "--out", "mine"], "mine"),
    "another config on an earlier run": ({}, ["--out", "prev", "--lr", "0.01"], "different config"),
    "unknown flag": ({}, ["--no-such-flag"], "unrecognized arguments"),
}


#: Run as a real process in the fast suite; every case is, under @slow (CI), and all run in-process.
IN_FAST_SUITE = {"bad YAML", "missing data file", "out holds notes", "another config on an earlier run",
                 "unknown flag"}


def _plant(case: str, folder: pathlib.Path, cu_file: pathlib.Path, earlier_run: pathlib.Path) -> list:
    """Lay out the case's files (data, an earlier run, its own files) in ``folder``; its arguments."""
    files, args, _ = MISTAKES[case]
    shutil.copy(cu_file, folder / "cu.extxyz")
    shutil.copytree(earlier_run, folder / "prev")
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    argv = ["--data", "cu.extxyz", "--out", "run", *TINY_FLAGS]
    if args and not args[0].startswith("-"):  # a config file comes first
        return [args[0], *argv, *args[1:]]
    return [*argv, *args]


def _check(case: str, code: int, stdout: str, stderr: str) -> None:
    output = stdout + stderr
    assert code == 2, output[-3000:]
    assert "Traceback" not in output
    errors = [line for line in stderr.splitlines() if line.startswith("eqgnn-train: error:")]
    assert len(errors) == 1 and MISTAKES[case][2] in errors[0], stderr
    if case != "unknown flag":  # argparse's own errors come with its usage lines
        assert stderr.strip().splitlines() == errors


@pytest.mark.parametrize("case", [c if c in IN_FAST_SUITE else pytest.param(c, marks=pytest.mark.slow)
                                  for c in MISTAKES])
def test_console_script_mistake_exits_2_and_changes_no_file(case, cu_file, earlier_run, tmp_path):
    argv = _plant(case, tmp_path, cu_file, earlier_run)
    before = snapshot(tmp_path)
    done = subprocess.run(eqgnn_train() + argv, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    _check(case, done.returncode, done.stdout, done.stderr)
    assert snapshot(tmp_path) == before, "a failed run changed or created files"


@pytest.mark.parametrize("case", list(MISTAKES))
def test_mistake_exits_2_and_changes_no_file(case, cu_file, earlier_run, tmp_path, monkeypatch, capsys):
    """The same table through ``main`` in this process (the allocator setting stubbed out)."""
    from ase_eqgnn import heap

    monkeypatch.setattr(heap, "keep_freed_memory", lambda: True)
    argv = _plant(case, tmp_path, cu_file, earlier_run)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse
        code = stop.code
    out = capsys.readouterr()
    _check(case, code, out.out, out.err)
    assert snapshot(tmp_path) == before, "a failed run changed or created files"


def test_help_works_and_lists_every_option():
    done = subprocess.run(eqgnn_train() + ["--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in ("--threads", "--num-threads", "--keep-freed-memory", "--max-time", "--out"):
        assert flag in done.stdout
    assert "Traceback" not in done.stderr


def test_threads_is_num_threads():
    assert config_from_args(build_parser().parse_args(["--threads", "3"])).num_threads == 3
    assert config_from_args(build_parser().parse_args(["--num-threads", "2"])).num_threads == 2


def test_the_command_keeps_freed_memory_unless_told_not_to(cu_file, tmp_path, monkeypatch):
    """eqgnn-train owns its process, so it turns ase_eqgnn.heap on; the library default is off."""
    from ase_eqgnn import heap

    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append(1) or True)
    base = ["--data", str(cu_file), *TINY_FLAGS]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert calls == [1]
    assert main([*base, "--out", str(tmp_path / "b"), "--no-keep-freed-memory"]) == 0
    assert calls == [1]
    (tmp_path / "c.yaml").write_text("keep_freed_memory: false\n")  # the config file may say so too
    assert main([str(tmp_path / "c.yaml"), *base, "--out", str(tmp_path / "c")]) == 0
    assert calls == [1]


def test_shipped_configs_load_and_describe_valid_models():
    """Every YAML recipe in training/configs reads into a TrainConfig whose model settings pass the
    model-file bounds (a typo in a shipped recipe fails here, not in a user's run)."""
    from pathlib import Path

    from ase_eqgnn.checkpoint.potential import check_hparams
    from ase_eqgnn.train.config import load_config

    configs = sorted((Path(__file__).resolve().parent.parent / "training" / "configs").glob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        cfg = load_config(path)
        check_hparams(dict(cfg.hparams))
