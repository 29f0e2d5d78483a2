"""``eqgnn-lammps-export``: write an ase_eqgnn potential for LAMMPS's ``pair_style mliap unified``.

    eqgnn-lammps-export MODEL [-o FILE] [--dtype float64|float32] [--no-halo [--skin Å]]

MODEL is a checkpoint path or a bundled name (``eqgnn-models``); FILE defaults to
``<name>.mliap.pkl``. Prints the input lines the LAMMPS input needs:

    pair_style mliap unified FILE 0      (0: ghost atoms need no neighbour lists)
    pair_coeff * * <elements>            (the model's elements; map your atom types to them)
    python eqgnn_attach input 1 SELF format p here "from ase_eqgnn.lammps.halo import ..."
    python eqgnn_attach invoke           (binds LAMMPS: ghosts take their owners' features)

With --no-halo, ghost atoms are evaluated on every rank instead (more work per rank, no python
command in the input):

    pair_style mliap unified FILE 1      (1: ghost atoms get neighbour lists; required)
    pair_coeff * * <elements>
    comm_modify cutoff X                 (X = layers x cutoff + skin; raise it with a larger skin)

LAMMPS must be built with ML-IAP Python support (docs/lammps.md). LAMMPS loads the file with
pickle, which runs code named in the file: use ML-IAP files only from sources you trust. A name
ending in .pt/.pth is refused (LAMMPS would read it with torch.load, which torch >= 2.6 refuses).
"""

from __future__ import annotations

import argparse
import math
import sys

from .lammps import OneLineParser, fail, first_line, positive_int

PROG = "eqgnn-lammps-export"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="bundled potential name or checkpoint path")
    p.add_argument("-o", "--output", help="output file (default <name>.mliap.pkl)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision LAMMPS evaluates the model in (default float64)")
    p.add_argument("--no-halo", dest="halo", action="store_false",
                   help="evaluate ghost atoms on every rank instead of exchanging their features")
    p.add_argument("--skin", type=float, default=2.0,
                   help="with --no-halo: the input's neighbour skin in Å, for the printed "
                        "comm_modify cutoff (default 2.0, LAMMPS's default in units metal)")
    p.add_argument("--threads", type=positive_int, help="torch threads while exporting")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not math.isfinite(args.skin) or args.skin < 0:
        return fail(PROG, f"--skin must be a finite non-negative number of Å, got {args.skin}")
    import torch

    from ..lammps.export import check_output_name, default_output_name, export_mliap

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        path = check_output_name(args.output or default_output_name(args.model))
        result = export_mliap(args.model, path, dtype=args.dtype, skin=args.skin, halo=args.halo)
    except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        return fail(PROG, first_line(err))
    print(f"wrote {result.path} ({result.unified.model.config['name']}, {args.dtype}, elements "
          f"{' '.join(result.unified.element_types)}, layers x cutoff "
          f"{result.unified.receptive_field:g} Å). LAMMPS input lines:")
    for line in result.input_lines:
        print("  " + line)
    if args.halo:
        print("(the python lines must come before the first run; LAMMPS's default ghost cutoff, "
              "cutoff + skin, is enough)")
    else:
        print(f"(comm_modify cutoff = layers x cutoff + a {args.skin:g} Å neighbour skin: raise it "
              "if the input's neighbor skin is larger, e.g. with --skin)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
