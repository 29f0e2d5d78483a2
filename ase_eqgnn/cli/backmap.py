"""``eqgnn-backmap``: back-map a coarse-grained trajectory to all-atom structures (thin front-end).

    eqgnn-backmap --model ala2 --cg cg.npy --out aa.pdb [--samples K] [--seed S]
    eqgnn-backmap --model run/best.pt --cg cg.dcd --top cg.pdb --out aa.xtc

CG input: ``.npy`` (frames, beads, 3) in Å, ``.xyz`` in Å, or any mdtraj format (nm inside the
file, converted) with ``--top`` where the format has no topology. Beads must be in the model's map
order. Output format by extension: .pdb, .dcd, .xtc, .h5. With ``--samples K`` each CG frame gives K
consecutive all-atom frames. The output is written under a temporary name and moved into place at
the end: a run that fails leaves an existing file as it was (exit code 2 for a user error).
"""

from __future__ import annotations

import sys
import time
from typing import List, Optional

import numpy as np

from .common import command_parser, count, device, existing_file, real, run_command

# The output and its temporaries may take at most this share of the machine's memory.
_MEMORY_SHARE = 0.5
# The prior's spread times this; far above 1 the decoder sees latents it never met (1e300: NaN atoms).
_MAX_PRIOR_TEMPERATURE = 100.0


def build_parser():
    p = command_parser("eqgnn-backmap", __doc__)
    p.add_argument("--model", required=True, help="bundled model name (e.g. ala2) or checkpoint path")
    p.add_argument("--cg", required=True, type=existing_file("CG trajectory"),
                   help="CG trajectory: .npy/.xyz (Å) or any mdtraj format")
    p.add_argument("--top", default=None, type=existing_file("topology"),
                   help="topology for the CG trajectory (mdtraj formats)")
    p.add_argument("--out", required=True, help="all-atom output: .pdb, .dcd, .xtc or .h5")
    p.add_argument("--samples", type=count(1), default=1, help="samples per CG frame (default 1)")
    p.add_argument("--seed", type=count(0, 2**63 - 1), default=None,
                   help="random seed for reproducible samples")
    p.add_argument("--temperature", type=real(minimum=0, maximum=_MAX_PRIOR_TEMPERATURE), default=1.0,
                   help="prior temperature: scales the latent spread (default 1, at most "
                        f"{_MAX_PRIOR_TEMPERATURE:g})")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--batch-size", type=count(1), default=512)
    p.add_argument("--no-progress", action="store_true")
    return p


def _physical_memory() -> Optional[int]:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def run(args) -> int:
    from ..cg.backmap import WRITABLE, BackMapper, read_cg, write_all_atom
    from ..cg.metrics import adjacency_from_bonds, bond_graph, clash_mask, has_clash
    from ..outputs import OutputFiles
    from ..pretrained import resolve_model

    model = resolve_model(args.model, kind="backmap")
    with OutputFiles([model, args.cg, args.top]) as outputs:
        outputs.add(args.out, "all-atom output", WRITABLE)
        mapper = BackMapper.load(model, device=args.device)
        cg_xyz, names = read_cg(args.cg, args.top)
        n_frames = len(cg_xyz) * args.samples
        needed = 3 * n_frames * mapper.model.n_atoms * 3 * 8  # float32 batches, float64 copies
        memory = _physical_memory()
        if memory and needed > _MEMORY_SHARE * memory:
            raise ValueError(f"{len(cg_xyz)} CG frames x {args.samples} samples = {n_frames} all-atom "
                             f"frames need about {needed / 2**30:.1f} GiB, more than half of this "
                             f"machine's {memory / 2**30:.1f} GiB; back-map fewer frames at a time")
        t0 = time.perf_counter()
        xyz = mapper.backmap(cg_xyz, samples=args.samples, seed=args.seed, batch_size=args.batch_size,
                             progress=not args.no_progress, temperature=args.temperature,
                             bead_names=names)
        dt = time.perf_counter() - t0
        if not np.isfinite(xyz).all():
            raise ValueError("the back-mapped coordinates are not finite numbers (is --temperature "
                             "far too high, or the CG input far from the training data?)")
        write_all_atom(outputs.start(args.out), xyz, mapper.topology)
        outputs.commit()
    ref = adjacency_from_bonds(len(mapper.elements), mapper.bonds)
    valid = np.mean([np.array_equal(a, ref) for a in bond_graph(xyz, mapper.elements)])
    clash = has_clash(xyz, clash_mask(mapper.elements, mapper.bonds)).mean()
    print(f"back-mapped {len(cg_xyz)} CG frames x {args.samples} samples -> {len(xyz)} all-atom "
          f"frames ({mapper.model.n_atoms} atoms) in {dt:.2f} s -> {args.out}")
    print(f"bond-graph validity (vs topology): {valid:.3f}   steric clash ratio: {clash:.3f}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
