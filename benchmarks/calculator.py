"""ASE-calculator benchmark: our models against SchNetPack's PaiNN, NequIP and MACE, in one run.

What is measured, for every tool on every system (float32, CPU, ``torch.set_num_threads(2)``):

- ms per energy+forces call: one ``calc.calculate(atoms, ["energy", "forces"])`` through each tool's
  ASE calculator, positions given a fresh random displacement (0.01 Å) before every call so nothing
  is cached; median of ``--repeats`` calls after ``--warmup`` untimed ones;
- MD steps/s: ASE ``VelocityVerlet`` (1 fs, NVE from a 300 K Maxwell-Boltzmann start), 100 steps
  after one untimed step; fewer where ``--md-budget-s`` caps a slow tool (the table says how many).

Systems: periodic fcc Cu (a = 3.6 Å) with 108 and 864 atoms, biphenyl (22 atoms) and a 96-atom water
cluster (32 ASE ``molecule("H2O")`` on a 4x4x2 grid, 3 Å apart), cutoff 5 Å everywhere; written once
to an extxyz file that every worker reads, so all tools see the same atoms.

Models, all randomly initialised (seeded), elements H C O Cu:

============== ============================================================ ==========================
column         model                                                        compared with
============== ============================================================ ==========================
ours-painn     ``build_model("painn", features=128, layers=3, n_radial=20)`` schnetpack (same size)
schnetpack     SchNetPack 2.0.4 PaiNN, n_atom_basis 128, 3 interactions,
               20 Gaussians, cosine cutoff, through ``SpkCalculator``
ours-tp        ``build_model("tp", l_max=1, layers=4, features=32)``         nequip (same size), mace
nequip         NequIP 0.19.1 defaults (4 layers, l_max 1, 32 features),
               through ``NequIPCalculator`` (eager model, see its worker)
mace           mace-torch 0.3.16 ScaleShiftMACE 64x0e+64x1o, max_ell 3,
               correlation 3, 2 interactions, through ``MACECalculator``
ours-egnn      ``build_model("egnn", features=128, layers=3)``             (no anchor)
ours-tp-c2/c3  ours-tp with ``correlation=2`` / ``3`` (body-ordered features;    ours-tp, mace
               only when named in ``--tools``)
ours-tp-c3-w64 ``build_model("tp", l_max=1, layers=2, features=64,             mace (same width)
               correlation=3)`` (only when named in ``--tools``); ``-c3-sh3-w64``
               also ``sh_l_max=3``: MACE's shape (density to l = 3);
               ``ours-tp-c3-sh3``: that shape at 32 features
ours-*-compiled the same with ``EqGNNCalculator(compile=True)`` (torch.compile;  as the eager ones
               the compile happens in the untimed warm-up call)
============== ============================================================ ==========================

Ratios are anchor time / our time, so > 1 means ours is faster (for MD: our steps/s / theirs).

Freed memory (``--freed-memory``): our worker asks EqGNNCalculator to have glibc keep the memory
torch frees for the next call (``keep_freed_memory=True``, :mod:`ase_eqgnn.heap`), as the ``eqgnn-*``
commands do; the anchors' calculators leave malloc as it is, so by default each tool runs as its
command-line tools ship. ``keep`` applies the same setting to every tool (the anchors gain from it too:
SchNetPack's Cu864 call faulted ~950,000 fresh pages per call without it), ``return`` to none.

Each tool runs in its own subprocess (``benchmarks/anchors/<tool>.py``, which prints one JSON line),
ours with this interpreter and each anchor with the python of its own virtual environment under
``--anchors-dir``, one at a time, interleaved system by system (``--order system``) so that a change
in machine load hits every tool alike. An anchor whose venv is missing is skipped, with a note.

Creating the anchor environments (also in ``benchmarks/setup_anchors.sh``; torch==2.13.0 goes in
FIRST so pip keeps the local CPU wheel instead of pulling a CUDA build; the pins conflict --
mace-torch 0.3.16 wants e3nn 0.4.4, nequip 0.19.1 wants e3nn 0.6.0 -- hence three venvs)::

    python3 -m venv /work/anchors/schnetpack
    /work/anchors/schnetpack/bin/python -m pip install --upgrade pip wheel
    /work/anchors/schnetpack/bin/python -m pip install "torch==2.13.0"
    /work/anchors/schnetpack/bin/python -m pip install "schnetpack==2.0.4" ase "torch==2.13.0"

    python3 -m venv /work/anchors/nequip
    /work/anchors/nequip/bin/python -m pip install --upgrade pip wheel
    /work/anchors/nequip/bin/python -m pip install "torch==2.13.0"
    /work/anchors/nequip/bin/python -m pip install "nequip==0.19.1" "e3nn==0.6.0" ase "torch==2.13.0"

    python3 -m venv /work/anchors/mace
    /work/anchors/mace/bin/python -m pip install --upgrade pip wheel
    /work/anchors/mace/bin/python -m pip install "torch==2.13.0"
    /work/anchors/mace/bin/python -m pip install "mace-torch==0.3.16" "e3nn==0.4.4" ase "torch==2.13.0"

Usage::

    python benchmarks/calculator.py [--anchors-dir /work/anchors] [--repeats 10] [--rounds 1] [--quick]
        [--systems Cu108,Cu864,biphenyl,water96] [--tools ours-painn,schnetpack,...]
        [--md-steps 100] [--md-budget-s 0] [--call-budget-s 0] [--json out.json] [--markdown]

On a GPU (``--device cuda``) the default systems add periodic Cu with 6,912 and 32,000 atoms, and the
table adds each tool's peak GPU memory per system (``torch.cuda.max_memory_allocated``, calls and MD).
The GPU machine has one interpreter and no venvs: install each anchor with ``pip install --target
SITE/<schnetpack|nequip|mace>`` and pass ``--anchor-site SITE``; each anchor then runs with this
interpreter and its folder first on ``PYTHONPATH`` (``benchmarks/gpu/run.sh`` does all of it).

``--quick``: Cu108 and biphenyl, 3 repeats, 10 MD steps (a smoke test, not numbers to quote).
On the 2-core machine the full set with every anchor at the defaults takes hours (Cu864 costs
seconds per call for the slow tools); a run that fits about half an hour:
``--repeats 5 --warmup 1 --call-budget-s 40 --md-budget-s 30``.
Timings on a shared machine move with its load: the run records the 1-minute load average before
and after every worker and prints them under the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = os.path.join(HERE, "anchors")
sys.path.insert(0, WORKERS)
import common  # noqa: E402

# key -> (venv name under --anchors-dir or None for ours, worker script, extra worker args)
TOOLS = {
    "ours-painn": (None, "ours.py", ["--model", "painn"]),
    "schnetpack": ("schnetpack", "schnetpack_painn.py", []),
    "ours-tp": (None, "ours.py", ["--model", "tp"]),
    "nequip": ("nequip", "nequip_tp.py", []),
    "mace": ("mace", "mace_model.py", []),
    "ours-egnn": (None, "ours.py", ["--model", "egnn"]),
    # tp with body-ordered features (correlation 2 / 3; c3-w64 at the MACE anchor's width); only
    # when named in --tools (OPT_IN)
    "ours-tp-c2": (None, "ours.py", ["--model", "tp-c2"]),
    "ours-tp-c3": (None, "ours.py", ["--model", "tp-c3"]),
    "ours-tp-c3-sh3": (None, "ours.py", ["--model", "tp-c3-sh3"]),
    "ours-tp-c3-w64": (None, "ours.py", ["--model", "tp-c3-w64"]),
    "ours-tp-c3-sh3-w64": (None, "ours.py", ["--model", "tp-c3-sh3-w64"]),
    # EqGNNCalculator(compile=True): torch.compile'd energy pass (the first call compiles, untimed)
    "ours-painn-compiled": (None, "ours.py", ["--model", "painn", "--compile"]),
    "ours-tp-compiled": (None, "ours.py", ["--model", "tp", "--compile"]),
    "ours-egnn-compiled": (None, "ours.py", ["--model", "egnn", "--compile"]),
    # GPU only: EqGNNCalculator(cuda_graphs="auto"), replays of a captured CUDA graph
    "ours-painn-graphs": (None, "ours.py", ["--model", "painn", "--cuda-graphs", "auto"]),
    "ours-tp-graphs": (None, "ours.py", ["--model", "tp", "--cuda-graphs", "auto"]),
}
OPT_IN = {"ours-tp-c2", "ours-tp-c3", "ours-tp-c3-sh3", "ours-tp-c3-w64", "ours-tp-c3-sh3-w64"}
# (anchor, ours): ratio columns, anchor time / our time
RATIOS = [("schnetpack", "ours-painn"), ("nequip", "ours-tp"), ("mace", "ours-tp"),
          ("mace", "ours-tp-c3-sh3"), ("mace", "ours-tp-c3-w64"), ("mace", "ours-tp-c3-sh3-w64"),
          ("schnetpack", "ours-painn-compiled"), ("nequip", "ours-tp-compiled"),
          ("schnetpack", "ours-painn-graphs"), ("nequip", "ours-tp-graphs")]
SYSTEM_LABELS = {"Cu108": "Cu fcc 108 (pbc)", "Cu864": "Cu fcc 864 (pbc)",
                 "Cu6912": "Cu fcc 6,912 (pbc)", "Cu32000": "Cu fcc 32,000 (pbc)",
                 "biphenyl": "biphenyl 22", "water96": "water cluster 96"}


def _python_for(tool: str, args) -> Optional[str]:
    """The interpreter a tool runs with: ours and --anchor-site anchors use this one."""
    venv = TOOLS[tool][0]
    if venv is None:
        return sys.executable
    if args.anchor_site:
        return sys.executable if os.path.isdir(os.path.join(args.anchor_site, venv)) else None
    py = os.path.join(args.anchors_dir, venv, "bin", "python")
    return py if os.path.exists(py) else None


def _gpu_name(device: str) -> Optional[str]:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_tool(tool: str, python: str, systems: List[str], args, systems_file: str,
             cache_dir: str, repeats: int, md_steps: int) -> Dict:
    _, script, extra = TOOLS[tool]
    cmd = [python, os.path.join(WORKERS, script), *extra,
           "--systems-file", systems_file, "--systems", ",".join(systems),
           "--repeats", str(repeats), "--warmup", str(args.warmup),
           "--md-steps", str(md_steps), "--md-budget-s", str(args.md_budget_s),
           "--call-budget-s", str(args.call_budget_s),
           "--threads", str(args.threads), "--clock", args.clock, "--device", args.device, "--cache-dir", cache_dir,
           "--freed-memory", args.freed_memory]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    if TOOLS[tool][0] is not None and args.anchor_site:  # the anchor's packages shadow the shared ones
        site = os.path.join(args.anchor_site, TOOLS[tool][0])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
    elif TOOLS[tool][0] is not None:  # an anchor: its own venv, nothing of ours on the path
        env.pop("PYTHONPATH", None)
        env["VIRTUAL_ENV"] = os.path.dirname(os.path.dirname(python))
    load_before = _loadavg()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = f"timed out after {args.timeout} s"
        rc = -1
    wall = time.perf_counter() - t0
    payload = None
    for line in stdout.splitlines():
        if line.startswith(common.RESULT_TAG):
            payload = json.loads(line[len(common.RESULT_TAG):])
    if payload is None:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        payload = {"tool": tool, "error": f"worker failed (exit {rc}):\n{tail}", "results": {}}
    if args.verbose:
        sys.stderr.write(stderr)
    payload.setdefault("runs", []).append({"systems": systems, "wall_s": round(wall, 1),
                                           "load_before": load_before, "load_after": _loadavg()})
    for name in systems:
        r = payload["results"].get(name)
        if r is None:
            print(f"  {tool:11s} {name:9s} FAILED", file=sys.stderr, flush=True)
            continue
        ms = "-" if r["ms"] is None else f"{r['ms']:.1f} ms"
        if r.get("peak_gib") is not None:
            ms += f" ({r['peak_gib']:.2f} GiB)"
        md = "-" if r["md_steps_per_s"] is None else f"{r['md_steps_per_s']:.2f} steps/s ({r['md_steps']})"
        err = f"  ERROR {r['error']}" if r.get("error") else ""
        print(f"  {tool:11s} {name:9s} {ms:>12s}  MD {md}  [load {load_before}->{_loadavg()}]{err}",
              file=sys.stderr, flush=True)
    return payload


def merge(into: Dict, payload: Dict) -> None:
    """Collect per-system payloads of one tool into one record; the calls of several rounds of one
    system are pooled (ms = median of all), its MD comes from the round that ran MD."""
    if not into:
        into.update({k: v for k, v in payload.items() if k not in ("results", "runs")})
        into["results"], into["runs"] = {}, []
    for system, rec in payload.get("results", {}).items():
        old = into["results"].get(system)
        if old is None or old.get("ms") is None:
            into["results"][system] = rec
        elif rec.get("ms") is not None:
            old["ms_all"] = old["ms_all"] + rec["ms_all"]
            old["ms"] = statistics.median(old["ms_all"])
    into["runs"].extend(payload.get("runs", []))
    if payload.get("error"):
        into.setdefault("errors", []).append(payload["error"])


# ------------------------------------------------------------------------------------------ table
def _fmt_ms(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def build_table(report: Dict) -> Dict:
    tools = [t for t in report["tools_order"] if t in report["tools"]]
    header = ["system", "metric"] + tools + [f"{a}/{o}" for a, o in RATIOS if a in tools and o in tools]
    rows = []

    def get(tool, system, key):
        rec = report["tools"].get(tool, {}).get("results", {}).get(system)
        return None if rec is None else rec.get(key)

    for system in report["systems"]:
        row = [SYSTEM_LABELS.get(system, system), "ms/call"]
        row += [_fmt_ms(get(t, system, "ms")) for t in tools]
        for a, o in RATIOS:
            if a in tools and o in tools:
                ta, to = get(a, system, "ms"), get(o, system, "ms")
                row.append(_fmt_ratio(ta / to if ta and to else None))
        rows.append(row)
    if any(get(t, s, "peak_gib") is not None for t in tools for s in report["systems"]):
        for system in report["systems"]:
            row = [SYSTEM_LABELS.get(system, system), "peak GiB"]
            row += ["-" if get(t, system, "peak_gib") is None else f"{get(t, system, 'peak_gib'):.2f}"
                    for t in tools]
            row += ["" for a, o in RATIOS if a in tools and o in tools]
            rows.append(row)
    if report["md_steps"] > 0:
        for system in report["systems"]:
            row = [SYSTEM_LABELS.get(system, system), "MD steps/s"]
            for t in tools:
                v, steps = get(t, system, "md_steps_per_s"), get(t, system, "md_steps")
                cell = "-" if v is None else f"{v:.2f}" if v < 100 else f"{v:.0f}"
                if v is not None and steps != report["md_steps"]:
                    cell += f" ({steps} st)"
                row.append(cell)
            for a, o in RATIOS:
                if a in tools and o in tools:
                    va, vo = get(a, system, "md_steps_per_s"), get(o, system, "md_steps_per_s")
                    row.append(_fmt_ratio(vo / va if va and vo else None))
            rows.append(row)
    return {"header": header, "rows": rows}


def format_text(report: Dict) -> str:
    table = build_table(report)
    cells = [table["header"]] + table["rows"]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table["header"]))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                               for i, c in enumerate(r)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + ["", *_footer(report)])


def format_markdown(report: Dict) -> str:
    table = build_table(report)
    head = table["header"]
    lines = ["| " + " | ".join(head) + " |",
             "| " + " | ".join(["---", "---"] + ["---:"] * (len(head) - 2)) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in table["rows"]]
    return "\n".join(lines + [""] + [f"- {l}" if l else "" for l in _footer(report) if l])


def _footer(report: Dict) -> List[str]:
    device = report.get("device", "cpu")
    where = "CPU" if device == "cpu" else f"{device} ({report.get('gpu', 'GPU')})"
    rounds = report.get("rounds", 1)
    pooled = f" pooled from {rounds} workers per tool taking turns," if rounds > 1 else ""
    out = [f"float32, {where}, {report['threads']} CPU threads, freed memory "
           f"{report.get('freed_memory', 'as-shipped')}; median of {report['repeats']} calls"
           f"{pooled} after {report['warmup']} warm-up each (fewer where --call-budget-s capped a "
           f"slow tool); MD: "
           f"VelocityVerlet 1 fs, {report['md_steps']} steps"
           + (f" ('(N st)' = fewer, capped at about {report['md_budget_s']:g} s of MD per tool and "
              f"system)" if report["md_budget_s"] > 0 else "")
           + ". Ratios: anchor time / our time (>1: ours faster).",
           f"machine: {report['machine']}; 1-min load average {report['load_start']} at start, "
           f"{report['load_end']} at end; range over workers {report['load_min']}-{report['load_max']}."]
    for tool in report["tools_order"]:
        rec = report["tools"].get(tool)
        if rec is None:
            continue
        v = ", ".join(f"{k} {val}" for k, val in rec.get("versions", {}).items() if k != "python")
        notes = "; ".join(rec.get("notes", []))
        out.append(f"{tool}: {v}{'; ' + notes if notes else ''}")
        capped = [f"{s} {r.get('n_calls', len(r.get('ms_all', [])))} calls"
                  for s, r in rec.get("results", {}).items()
                  if r.get("ms_all") and len(r["ms_all"]) != report["repeats"]]
        if capped:
            out.append(f"  {tool}: fewer timed calls: {', '.join(capped)}")
        for s, r in rec.get("results", {}).items():
            if r.get("md_note"):
                out.append(f"  {tool} {s}: {r['md_note']}")
            if r.get("error"):
                out.append(f"  {tool} {s}: ERROR {r['error']}")
        for e in rec.get("errors", []):
            out.append(f"  {tool}: {e.splitlines()[0]}  (see the JSON for the worker's stderr)")
    out += report["skipped"]
    return out


# ------------------------------------------------------------------------------------------ main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anchors-dir", default="/work/anchors",
                   help="folder holding the anchor venvs schnetpack/, nequip/, mace/")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per system (default 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="Cu108 and biphenyl, 3 repeats, 10 MD steps: a smoke test")
    p.add_argument("--systems", default=None, help=f"comma list of {','.join(common.SYSTEM_NAMES)}")
    p.add_argument("--tools", default=None,
                   help=f"comma list of {','.join(TOOLS)} (default: all; the -graphs ones on a GPU only)")
    p.add_argument("--md-steps", type=int, default=None, help="VelocityVerlet steps (default 100; 0 = no MD)")
    p.add_argument("--md-budget-s", type=float, default=0.0,
                   help="cap each tool's MD on each system to about this many seconds (fewer steps)")
    p.add_argument("--call-budget-s", type=float, default=0.0,
                   help="cap each tool's timed calls on each system to about this many seconds "
                        "(fewer repeats, at least 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time single calls in wall time or in each worker's CPU time (with --threads 1: "
                        "the cost on an idle core, for a loaded machine; MD steps stay wall time)")
    p.add_argument("--freed-memory", choices=common.FREED_MEMORY_MODES, default="as-shipped",
                   help="glibc malloc keeps freed memory for reuse: 'as-shipped' (ours does, as "
                        "EqGNNCalculator does by default; anchors do not), 'keep' (every tool) or "
                        "'return' (no tool). See ase_eqgnn/heap.py")
    p.add_argument("--device", default="cpu", help="cpu or cuda, for every tool")
    p.add_argument("--anchor-site", default=None,
                   help="instead of venvs: a folder holding schnetpack/, nequip/, mace/ made with "
                        "'pip install --target', run with this interpreter (the GPU machine)")
    p.add_argument("--rounds", type=int, default=1,
                   help="split each tool's timed calls on a system into this many workers, the tools "
                        "taking turns, and pool them: a slow drift in machine load then hits every "
                        "tool alike (MD runs in the first round only)")
    p.add_argument("--order", choices=["system", "tool"], default="system",
                   help="'system': one worker per (system, tool), interleaved (robust to load "
                        "changes); 'tool': one worker per tool for all systems (less start-up)")
    p.add_argument("--timeout", type=float, default=3600.0, help="per worker, seconds")
    p.add_argument("--cache-dir", default=None,
                   help="where anchors keep their saved models (default: <anchors-dir>/.cache)")
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--verbose", action="store_true", help="echo the workers' stderr")
    p.add_argument("--from-json", default=None,
                   help="print the table of a report saved with --json instead of running")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
        print(format_markdown(report) if args.markdown else format_text(report))
        return report

    default_systems = common.GPU_SYSTEM_NAMES if args.device.startswith("cuda") else common.SYSTEM_NAMES
    systems = (args.systems.split(",") if args.systems else
               ["Cu108", "biphenyl"] if args.quick else list(default_systems))
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    if args.md_steps is None:
        args.md_steps = 10 if args.quick else 100
    tools = ([t for t in args.tools.split(",") if t] if args.tools else
             [t for t in TOOLS if t not in OPT_IN and (args.device.startswith("cuda") or not t.endswith("-graphs"))])
    for t in tools:
        if t not in TOOLS:
            p.error(f"unknown tool {t!r}; known: {', '.join(TOOLS)}")

    skipped, pythons = [], {}
    for t in tools:
        py = _python_for(t, args)
        if py is None:
            venv = os.path.join(args.anchor_site or args.anchors_dir, TOOLS[t][0])
            msg = (f"skipped {t}: no virtual environment at {venv} "
                   f"(create it with benchmarks/setup_anchors.sh {args.anchors_dir})")
            print(msg, file=sys.stderr)
            skipped.append(msg)
        else:
            pythons[t] = py
    run_tools = [t for t in tools if t in pythons]

    cache_dir = args.cache_dir or (os.path.join(args.anchors_dir, ".cache")
                                   if os.path.isdir(args.anchors_dir) else
                                   os.path.join(tempfile.gettempdir(), "eqgnn_bench_cache"))
    os.makedirs(cache_dir, exist_ok=True)
    rounds = max(1, args.rounds)
    report = {"systems": systems, "tools_order": tools, "rounds": rounds,
              "repeats": -(-args.repeats // rounds) * rounds,
              "warmup": args.warmup, "md_steps": args.md_steps, "md_budget_s": args.md_budget_s,
              "call_budget_s": args.call_budget_s, "threads": args.threads,
              "freed_memory": args.freed_memory, "device": args.device, "gpu": _gpu_name(args.device),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
              "load_start": _loadavg(), "skipped": skipped, "tools": {}}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        systems_file = os.path.join(tmp, "systems.extxyz")
        common.write_systems(systems_file, systems)
        if args.order == "tool":
            plan = [(t, systems, r) for r in range(rounds) for t in run_tools]
        else:
            plan = [(t, [s], r) for s in systems for r in range(rounds) for t in run_tools]
        per_round = report["repeats"] // rounds
        for t, sys_list, r in plan:
            payload = run_tool(t, pythons[t], sys_list, args, systems_file, cache_dir,
                               repeats=per_round, md_steps=args.md_steps if r == 0 else 0)
            merge(report["tools"].setdefault(t, {}), payload)
            if args.json:  # after every worker, so a run cut short keeps what it measured
                with open(args.json, "w") as f:
                    json.dump(report, f, indent=1)
    report["load_end"] = _loadavg()
    loads = [x for rec in report["tools"].values() for run in rec.get("runs", [])
             for x in (run["load_before"], run["load_after"]) if x is not None]
    report["load_min"], report["load_max"] = (min(loads), max(loads)) if loads else (None, None)
    report["wall_s"] = round(time.time() - started, 1)

    print(format_markdown(report) if args.markdown else format_text(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
