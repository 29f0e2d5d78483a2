"""keep_freed_memory: torch's freed CPU memory stays in the process for reuse (glibc only)."""

import subprocess
import sys

import pytest

import ase_eqgnn.calculator as calculator_module
from ase_eqgnn import EqGNNCalculator, build_model
from ase_eqgnn.heap import _glibc

# A child process, so that this one's malloc stays as it was. 32 MiB is above glibc's largest
# dynamic mmap threshold: by default each such tensor is a fresh mmap whose pages all fault.
_COUNT_FAULTS = """
import resource, torch
from ase_eqgnn.heap import keep_freed_memory

def faults(n=8):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        x = torch.ones(8 * 2**20)  # 32 MiB, every page written
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
applied = keep_freed_memory()
faults(1)  # the heap grows once
# (the least of three: this VM's kernel reclaims idle pages now and then, which refault)
print(before, applied, min(faults() for _ in range(3)))
"""


@pytest.mark.skipif(_glibc() is None, reason="needs glibc's malloc")
def test_freed_memory_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", _COUNT_FAULTS], capture_output=True, text=True,
                         check=True).stdout.split()
    before, applied, after = int(out[0]), out[1], int(out[2])
    pages = 8 * 32 * 2**20 // 4096
    assert applied == "True"
    assert before > pages // 2  # the default: the pages of every tensor fault again
    assert after < pages // 50


def test_calculator_keeps_freed_memory_only_when_asked(monkeypatch):
    # A library leaves its host process's allocator alone unless asked (the eqgnn-* commands ask).
    calls = []
    monkeypatch.setattr(calculator_module.heap, "keep_freed_memory", lambda: calls.append(1))
    model = build_model("painn", ["Cu"], cutoff=3.0, features=8, layers=1)
    EqGNNCalculator(model)
    assert calls == []
    EqGNNCalculator(model, keep_freed_memory=True)
    assert calls == [1]
