"""Where one energy+forces call of our calculator goes on the GPU: wall time vs GPU busy time.

    python benchmarks/gpu/profile_ours.py [--device cuda] [--systems biphenyl,water96,Cu864,Cu6912]

For PaiNN (128 x 3, 20 radial) and tp (l_max 1, 4 layers, 32 features), float32, each system:
median wall ms per call of the eager model (``cuda_graphs=False``) and of the default calculator
(``cuda_graphs="auto"``: replays of a captured CUDA graph up to 100,000 pairs), positions moved
0.01 Å before every call; for the eager model also the GPU busy ms and CUDA kernels per call from
torch.profiler (5 calls), and for the first and last system the ops with the most GPU time. Wall
time far above busy time means the call is bound by launches and the host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "anchors"))
import common  # noqa: E402

from ase_eqgnn import EqGNNCalculator, build_model  # noqa: E402

MODELS = {"painn": dict(features=128, layers=3, n_radial=20), "tp": dict(l_max=1, layers=4, features=32)}


def device_time_us(event) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, attr):
            return float(getattr(event, attr))
    return 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--systems", default="biphenyl,water96,Cu864,Cu6912")
    args = p.parse_args()
    names = args.systems.split(",")
    systems = common.build_systems(names)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    print(f"{'model':6s} {'system':9s} {'eager ms':>8s} {'auto ms':>8s} {'busy ms':>8s} {'kernels':>8s}")
    for model_name, hp in MODELS.items():
        torch.manual_seed(0)
        model = build_model(model_name, common.SPECIES, common.CUTOFF, **hp)
        for sname in names:
            atoms = systems[sname].copy()
            base = atoms.positions.copy()
            rng = np.random.default_rng(0)
            wall = {}
            for graphs in ("auto", False):  # the eager one last: it is the one profiled below
                calc = EqGNNCalculator(model, device=args.device, cuda_graphs=graphs,
                                       keep_freed_memory=True)

                def call():
                    atoms.positions = base + rng.normal(0.0, common.PERTURB_A, base.shape)
                    calc.calculate(atoms, ["energy", "forces"])

                for _ in range(5):
                    call()
                sync()
                wall[graphs] = []
                for _ in range(15):
                    t0 = time.perf_counter()
                    call()
                    wall[graphs].append(1e3 * (time.perf_counter() - t0))
            with profile(activities=activities) as prof:
                for _ in range(5):
                    call()
                sync()
            kernels = [e for e in prof.events() if e.device_type.name in ("CUDA", "PrivateUse1")]
            busy = sum(e.device_time for e in kernels) / 5e3 if kernels else float("nan")
            print(f"{model_name:6s} {sname:9s} {statistics.median(wall[False]):8.2f} "
                  f"{statistics.median(wall['auto']):8.2f} {busy:8.2f} "
                  f"{len(kernels) / 5:8.0f}", flush=True)
            if sname in (names[0], names[-1]):
                averages = sorted(prof.key_averages(), key=device_time_us, reverse=True)[:12]
                for e in averages:
                    print(f"    {e.key[:60]:60s} gpu {device_time_us(e) / 5e3:7.3f} ms/call "
                          f"cpu {e.self_cpu_time_total / 5e3:7.3f} ms/call  x{e.count // 5}")


if __name__ == "__main__":
    main()
