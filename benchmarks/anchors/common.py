"""Shared by every benchmark worker (ours and the anchors): systems, timing loops, the JSON protocol.

Depends on numpy and ASE only (plus torch for the thread setting), so it imports unchanged inside
each anchor's own virtual environment. ``benchmarks/calculator.py`` writes the systems once to an
extxyz file and passes it to every worker (``--systems-file``), so all tools see the same atoms even
if their ASE versions differ; without the file a worker builds them itself with :func:`build_systems`.

Protocol: a worker prints exactly one line starting with :data:`RESULT_TAG` followed by a JSON
object::

    {"tool": ..., "versions": {...}, "dtype": "float32", "notes": [...],
     "results": {system: {"n_atoms", "ms", "ms_all", "md_steps", "md_steps_per_s", "md_note",
                          "error"}}}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List

import numpy as np

RESULT_TAG = "@@BENCH_RESULT@@"
CUTOFF = 5.0
SPECIES = [1, 6, 8, 29]  # H, C, O, Cu: every model knows the same four elements
SYSTEM_NAMES = ["Cu108", "Cu864", "biphenyl", "water96"]  # the CPU set
GPU_SYSTEM_NAMES = ["biphenyl", "water96", "Cu108", "Cu864", "Cu6912", "Cu32000"]
PERTURB_A = 0.01  # Å, std of the fresh Gaussian displacement applied before every timed call
MD_TIMESTEP_FS = 1.0
MD_TEMPERATURE_K = 300.0


# ------------------------------------------------------------------------------------------ systems
def _biphenyl():
    """C12H10 (22 atoms): ASE's molecule('biphenyl') where this ASE has it, else two benzene rings."""
    from ase import Atoms
    from ase.build import molecule

    try:
        atoms = molecule("biphenyl")
        if len(atoms) == 22:
            return atoms
    except (KeyError, ValueError):
        pass
    # Two planar rings joined by a 1.49 Å C-C bond along x (coplanar is fine for timing).
    r_cc, r_ch, bridge = 1.39, 1.09, 1.49
    ang = np.deg2rad(np.arange(6) * 60.0)
    ring = np.stack([r_cc * np.cos(ang), r_cc * np.sin(ang), np.zeros(6)], axis=1)
    hyd = np.stack([(r_cc + r_ch) * np.cos(ang), (r_cc + r_ch) * np.sin(ang), np.zeros(6)], axis=1)
    shift = np.array([r_cc + bridge / 2, 0.0, 0.0])
    c1, h1 = ring - shift, hyd - shift          # ring 1, its ipso carbon is index 0 (at +x)
    c2, h2 = -ring + shift, -hyd + shift         # ring 2, mirrored, ipso carbon index 0 (at -x)
    pos = np.concatenate([c1, c2, np.delete(h1, 0, 0), np.delete(h2, 0, 0)])
    return Atoms("C12H10", positions=pos)


def _water_cluster():
    """32 H2O (96 atoms) from ASE's molecule('H2O') on a 4x4x2 grid, 3 Å apart, no pbc."""
    from ase import Atoms
    from ase.build import molecule

    h2o = molecule("H2O")
    cluster = Atoms()
    for ix in range(4):
        for iy in range(4):
            for iz in range(2):
                w = h2o.copy()
                w.translate(np.array([ix, iy, iz], dtype=float) * 3.0)
                cluster += w
    cluster.center(vacuum=0.0)
    return cluster


def _copper(reps: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((reps, reps, reps))
    atoms.pbc = True
    return atoms


def build_systems(names=SYSTEM_NAMES) -> Dict[str, "object"]:
    makers = {"Cu108": lambda: _copper(3), "Cu864": lambda: _copper(6),
              "Cu6912": lambda: _copper(12), "Cu32000": lambda: _copper(20),
              "biphenyl": _biphenyl, "water96": _water_cluster}
    out = {}
    for n in names:
        if n not in makers:
            raise ValueError(f"unknown system {n!r}; known: {', '.join(makers)}")
        atoms = makers[n]()
        atoms.info["system"] = n
        out[n] = atoms
    return out


def write_systems(path: str, names=SYSTEM_NAMES) -> None:
    from ase.io import write

    write(path, list(build_systems(names).values()), format="extxyz")


def read_systems(path: str) -> Dict[str, "object"]:
    from ase.io import read

    out = {}
    for atoms in read(path, index=":", format="extxyz"):
        atoms.calc = None
        out[atoms.info["system"]] = atoms
    return out


# ------------------------------------------------------------------------------------------ timing
def set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    import torch

    torch.set_num_threads(n)


def time_calls(atoms, calc, repeats: int, warmup: int, seed: int = 0,
               budget_s: float = 0.0, clock: str = "wall") -> List[float]:
    """ms per energy+forces call; positions get a fresh random displacement before every call.

    ``budget_s`` > 0 caps the timed calls to about that much wall time (at least 3 calls), judged
    from the last warm-up call. ``clock="cpu"`` counts the process's CPU time instead of wall time
    (with one thread: what the call costs on an idle core, however loaded the machine is).
    """
    now = time.process_time if clock == "cpu" else time.perf_counter
    from ase.calculators.calculator import all_changes

    atoms = atoms.copy()
    atoms.calc = calc
    base = atoms.get_positions().copy()
    rng = np.random.default_rng(seed)

    def one_call():
        atoms.set_positions(base + rng.normal(0.0, PERTURB_A, base.shape))
        t0 = now()
        # One calculation that yields both (atoms.get_potential_energy() then atoms.get_forces()
        # would run SchNetPack's calculator twice: it stores only the property asked for). The
        # positions changed, so every calculator recomputes; nothing is served from a cache.
        calc.calculate(atoms, ["energy", "forces"], all_changes)
        return 1e3 * (now() - t0)

    last = 0.0
    for _ in range(max(1, warmup)):
        last = one_call()
    if budget_s > 0 and last * repeats > 1e3 * budget_s:
        repeats = max(3, int(1e3 * budget_s / last))
    times = [one_call() for _ in range(repeats)]
    res = calc.results
    if not np.isfinite(res["energy"]) or not np.isfinite(np.asarray(res["forces"])).all():
        raise FloatingPointError("non-finite energy or forces")
    return times


def md_steps_for(ms_per_call: float, requested: int, budget_s: float, minimum: int = 3) -> int:
    """``requested`` steps unless they would take longer than ``budget_s``; then fewer (>= minimum)."""
    if budget_s <= 0 or ms_per_call * requested <= 1e3 * budget_s:
        return requested
    return max(minimum, min(requested, int(1e3 * budget_s / ms_per_call)))


def time_md(atoms, calc, steps: int, seed: int = 1):
    """VelocityVerlet NVE: (steps/s, steps done, error or None), after one untimed step.

    The models are randomly initialised, so a trajectory can blow up (atoms driven onto each other,
    which a calculator rightly refuses). Steps are timed one by one; if a step fails after at least
    3 steps, the rate over the completed steps is reported together with the error.
    """
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=MD_TEMPERATURE_K, rng=np.random.default_rng(seed))
    dyn = VelocityVerlet(atoms, timestep=MD_TIMESTEP_FS * units.fs)
    dyn.run(1)  # warm-up; leaves the forces of the current positions cached
    done, elapsed, error = 0, 0.0, None
    for _ in range(steps):
        t0 = time.perf_counter()
        try:
            dyn.run(1)  # one force evaluation (the start forces are cached)
        except Exception as exc:
            error = f"MD stopped after {done} steps: {type(exc).__name__}: {exc}"
            if done < 3:
                raise RuntimeError(error) from exc
            break
        elapsed += time.perf_counter() - t0
        done += 1
    return done / elapsed, done, error


# ------------------------------------------------------------------------------------------ worker
def worker_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--systems-file", default=None, help="extxyz written by calculator.py")
    p.add_argument("--systems", default=",".join(SYSTEM_NAMES))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--call-budget-s", type=float, default=0.0,
                   help="cap on the timed single calls' wall time per system (fewer repeats, >= 3)")
    p.add_argument("--md-steps", type=int, default=100, help="0 skips MD")
    p.add_argument("--md-budget-s", type=float, default=0.0,
                   help="cap on the MD wall time per system (fewer steps if needed; 0 = no cap)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="single calls timed in wall time or in process CPU time (use with --threads 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (each tool's calculator gets it)")
    p.add_argument("--cache-dir", default=None, help="where saved/compiled anchor models are kept")
    p.add_argument("--freed-memory", choices=FREED_MEMORY_MODES, default="as-shipped",
                   help="glibc malloc: 'as-shipped' (ours keeps freed memory, as EqGNNCalculator does "
                        "by default; anchors as they come), 'keep' (every tool keeps it: "
                        "ase_eqgnn/heap.py) or 'return' (no tool does)")
    return p


FREED_MEMORY_MODES = ["as-shipped", "keep", "return"]


def keep_freed_memory() -> bool:
    """ase_eqgnn.heap.keep_freed_memory, loaded from its file (stdlib only), so anchors' venvs can run
    it without our package."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "ase_eqgnn", "heap.py")
    spec = importlib.util.spec_from_file_location("_eqgnn_heap", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.keep_freed_memory()


def run_worker(args, tool: str, make_calc: Callable[[], object], versions: Dict[str, str],
               dtype: str, notes: List[str] = (), md_rehearsal: bool = False) -> None:
    """Time ``make_calc()`` on every requested system and print the tagged JSON line.

    ``md_rehearsal``: run the MD once untimed before the timed run, with the same calculator, start
    and velocities (so the same trajectory): what a calculator does once per run (compiling) is then
    left out, as a long run would amortise it.
    """
    names = [s for s in args.systems.split(",") if s]
    if args.freed_memory == "keep" and not keep_freed_memory():
        notes = list(notes) + ["keep freed memory: not applied (not glibc)"]
    notes = list(notes) + [f"freed memory: {args.freed_memory}"]
    systems = read_systems(args.systems_file) if args.systems_file else build_systems(names)
    results = {}
    for name in names:
        atoms = systems[name]
        r = {"n_atoms": len(atoms), "ms": None, "ms_all": [], "md_steps": 0, "md_steps_per_s": None,
             "md_note": None, "error": None}
        cuda = args.device.startswith("cuda")
        if cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            times = time_calls(atoms, make_calc(), args.repeats, args.warmup,
                               budget_s=args.call_budget_s, clock=args.clock)
            r["ms_all"] = [round(t, 3) for t in times]
            r["ms"] = statistics.median(times)
            if args.md_steps > 0:
                steps = md_steps_for(r["ms"], args.md_steps, args.md_budget_s)
                calc = make_calc()
                if md_rehearsal:
                    time_md(atoms, calc, steps)
                r["md_steps_per_s"], r["md_steps"], r["md_note"] = time_md(atoms, calc, steps)
        except Exception as exc:  # report, keep going with the other systems
            r["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        if cuda:  # the most GPU memory torch held at once for this system, calls and MD
            r["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        results[name] = r
        print(f"[{tool}] {name}: {r['ms']} ms, md {r['md_steps_per_s']} steps/s "
              f"({r['md_steps']} steps){'  ERROR ' + r['error'] if r['error'] else ''}",
              file=sys.stderr, flush=True)
    if args.clock == "cpu":
        notes = list(notes) + ["single calls timed in process CPU time"]
    payload = {"tool": tool, "versions": versions, "dtype": dtype, "notes": list(notes),
               "threads": args.threads, "device": args.device, "results": results}
    print(RESULT_TAG + " " + json.dumps(payload), flush=True)


def cache_dir(args) -> str:
    """Folder for saved/compiled anchor models (outside the repository)."""
    import tempfile

    path = args.cache_dir or os.path.join(tempfile.gettempdir(), "eqgnn_bench_cache")
    os.makedirs(path, exist_ok=True)
    return path


def package_versions(*names: str) -> Dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out
