"""``eqgnn-cg``: the whole coarse-grained loop in one command.

    eqgnn-cg TRAJ [--energies NPZ] [--top PDB] [--map ala2-5bead] [--temperature 300]
             [--model painn] [--epochs 20] [--md-steps 5000] [--timestep 2]
             [--backmapper ala2|FILE|train [--backmap-epochs 20] [--backmap-time S]] [--out cg_run]

From an all-atom trajectory with forces (any file ``eqgnn-train`` reads: an mdtraj trajectory with
an ``--energies`` npz of forces, an npz, an extxyz with forces) and a CG map, it

1. trains a CG potential by force matching (``eqgnn-train --cg-map``: the mapped forces, priors
   fitted at ``--temperature``) in ``OUT/train/`` (re-running the same command resumes there);
2. runs Langevin CG MD at that temperature from the first frame's beads;
3. back-maps the CG frames with a back-mapping model of the same map: the bundled ``ala2`` by
   default, a back-mapping model file, or, with ``--backmapper train``, one trained here on the same
   all-atom trajectory (``eqgnn-train-backmap``'s trainer, in ``OUT/backmap/``, within
   ``--backmap-epochs`` / ``--backmap-time``; the trajectory must then be an mdtraj format with a
   topology: .h5, .pdb, or ``--top``; re-running resumes there too);

and writes ``OUT/cg_model.pt`` (the CG model file, for ``eqgnn-md --model`` and
``EqGNNCalculator``), ``OUT/cg.traj`` (bead frames), ``OUT/all_atom.pdb`` (``--all-atom`` to choose
.pdb/.dcd/.xtc/.h5), ``OUT/report.json`` (training errors, MD speed, back-mapped validity and, for
the alanine-dipeptide 5-bead map, the (phi, psi) populations and JS divergence of the CG run
against the input trajectory) and, for that map, ``OUT/rama.png``.

Everything is checked before anything is written (inputs, map, the back-mapper's map against the
CG map, the output names); the outputs are written under temporary names and moved into place at
the end. Exit codes: 0 done; 2 a user error (one line, no output written); 3 the CG MD left the
model's reach (the molecule broke apart: a shorter ``--timestep``); 130/143 interrupted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import List, Optional

from .common import (EXIT_OK, EXIT_PHYSICS_STOP, command_parser, count, device, existing_file, real,
                     run_command)

PROG = "eqgnn-cg"


def build_parser():
    p = command_parser(PROG, __doc__)
    p.add_argument("traj", type=existing_file("all-atom trajectory"),
                   help="all-atom trajectory with forces (any format eqgnn-train reads)")
    p.add_argument("--energies", type=existing_file("energies/forces npz"), default=None,
                   help="npz with the trajectory's forces (mdtraj formats)")
    p.add_argument("--top", type=existing_file("topology"), default=None,
                   help="topology for trajectory formats without one")
    p.add_argument("--map", default="ala2-5bead",
                   help="CG map: ala2-5bead, residue, residue-com, ca, or a CG map .json")
    p.add_argument("--temperature", type=real(minimum=1, maximum=10000), default=300.0,
                   help="temperature of the all-atom data and of the CG MD, K (default 300)")
    p.add_argument("--model", choices=("painn", "egnn", "tp"), default="painn",
                   help="network family on the beads")
    p.add_argument("--features", type=count(1, 1024), default=32)
    p.add_argument("--layers", type=count(1, 32), default=2)
    p.add_argument("--cutoff", type=real(minimum=0.5, maximum=20), default=6.0, help="Å")
    p.add_argument("--epochs", type=count(1), default=20)
    p.add_argument("--max-time", type=real(above=0), default=None, help="training budget, s")
    p.add_argument("--batch-size", type=count(1), default=32)
    p.add_argument("--lr", type=real(above=0), default=2e-3)
    p.add_argument("--md-steps", type=count(1), default=5000)
    # 2 fs: the largest step at which the bundled ala2-cg keeps NVE energy (benchmarks/cg_loop.py)
    p.add_argument("--timestep", type=real(above=0, maximum=50), default=2.0, help="CG MD, fs")
    p.add_argument("--interval", type=count(1), default=50, help="steps between CG frames")
    p.add_argument("--backmapper", default="ala2",
                   help="back-mapping model: bundled name or file (same CG map), or 'train' to train "
                        "one on TRAJ in OUT/backmap/")
    p.add_argument("--backmap-epochs", type=count(1), default=None,
                   help="with --backmapper train: most epochs (default 20)")
    p.add_argument("--backmap-time", type=real(above=0), default=None,
                   help="with --backmapper train: training budget, s")
    p.add_argument("--samples", type=count(1, 100), default=1, help="all-atom samples per CG frame")
    p.add_argument("--out", default="cg_run", help="output folder")
    p.add_argument("--all-atom", default=None,
                   help="all-atom output file (.pdb, .dcd, .xtc, .h5); default OUT/all_atom.pdb")
    p.add_argument("--seed", type=count(0, 2**62), default=0)
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--no-progress", action="store_true")
    return p


def _same_map(a, b) -> bool:
    import numpy as np

    return a.n_atoms == b.n_atoms and a.n_beads == b.n_beads and np.allclose(a.weights(), b.weights())


def _backmap_task(args, run_dir: str):
    """The back-mapping training run on the input trajectory (the package's back-mapping trainer,
    :class:`~ase_eqgnn.cg.train.BackmapTask`): data read and run folder checked, nothing written."""
    from ..cg.train import BackmapTask, resolve_config

    cfg = resolve_config(traj=[args.traj], top=args.top, map=args.map, out=run_dir,
                         max_epochs=args.backmap_epochs or 20, max_time=args.backmap_time, seed=args.seed,
                         device=args.device)
    try:
        return BackmapTask(cfg, progress=not args.no_progress)
    except ValueError as err:
        raise ValueError(f"--backmapper train: {err}") from None


def _train_backmapper(task):
    """Train ``task`` (resuming its run folder); the path of its ``best.pt`` and what to report."""
    best = task.fit()
    if not best.exists():
        raise ValueError("the back-mapping training gave no finite validation loss (no best.pt): "
                         "try a longer --backmap-time or more --backmap-epochs")
    row = task.loop.history[task.loop.best_epoch]
    return best, {"run": task.cfg["out"], "epochs": task.loop.epoch, "best_epoch": task.loop.best_epoch + 1,
                  **{k: row[k] for k in ("val_loss", "val_recon_rmsd", "val_sample_heavy_rmsd",
                                         "val_sample_valid", "val_sample_clash") if k in row}}


def run(args) -> int:
    import numpy as np

    from ..calculator import EqGNNCalculator
    from ..cg import ramachandran as rama
    from ..cg.backmap import WRITABLE, BackMapper, write_all_atom
    from ..cg.beads import beads_to_atoms
    from ..cg.loop import backmap_report, fes_report, is_ala2_five_bead, run_cg_md
    from ..cg.training import MAP_NAMES
    from ..checkpoint import load_model
    from ..errors import AtomsTooCloseError, OutOfDomainError
    from ..outputs import OutputFiles
    from ..pretrained import resolve_model
    from ..train import Trainer, TrainConfig

    train_mapper = args.backmapper == "train"
    if train_mapper and args.map not in MAP_NAMES:
        raise ValueError(f"--backmapper train needs a named --map ({', '.join(MAP_NAMES)}), "
                         f"not {args.map}; or give a back-mapping model file of that map")
    if not train_mapper and (args.backmap_epochs, args.backmap_time) != (None, None):
        raise ValueError("--backmap-epochs and --backmap-time need --backmapper train")
    backmapper = None if train_mapper else resolve_model(args.backmapper, kind="backmap")
    out = args.out
    names = {"model": os.path.join(out, "cg_model.pt"), "cg": os.path.join(out, "cg.traj"),
             "aa": args.all_atom or os.path.join(out, "all_atom.pdb"),
             "report": os.path.join(out, "report.json"), "plot": os.path.join(out, "rama.png")}
    with OutputFiles([args.traj, args.energies, args.top, backmapper]) as outputs:
        outputs.add(names["model"], "CG model file", (".pt",))
        outputs.add(names["cg"], "CG trajectory", (".traj",))
        outputs.add(names["aa"], "all-atom trajectory", WRITABLE)
        outputs.add(names["report"], "report", (".json",))
        if train_mapper:  # reads the trajectory and checks OUT/backmap/ now; trains after the CG MD
            backmap_task = _backmap_task(args, os.path.join(out, "backmap"))
            mapper_map, mapper_topology = backmap_task.model.cg_map, backmap_task.topology
        else:
            mapper = BackMapper.load(backmapper, device=args.device)
            mapper_map, mapper_topology = mapper.cg_map, mapper.topology
        cfg = TrainConfig(data=args.traj, energies=args.energies, topology=args.top, cg_map=args.map,
                          temperature=args.temperature, model=args.model, cutoff=args.cutoff,
                          hparams={"features": args.features, "layers": args.layers},
                          out=os.path.join(out, "train"), max_epochs=args.epochs,
                          max_time=args.max_time, batch_size=args.batch_size, lr=args.lr,
                          valid_fraction=0.1, seed=args.seed, device=args.device,
                          progress=not args.no_progress, keep_freed_memory=True)
        trainer = Trainer(cfg)
        try:
            cg = trainer.cg
            if not _same_map(mapper_map, cg.cg_map):
                raise ValueError(f"the back-mapping model {args.backmapper} was trained on another CG "
                                 f"map ({mapper_map.n_beads} beads of {mapper_map.n_atoms} atoms) "
                                 f"than --map {args.map} ({cg.cg_map.n_beads} beads of "
                                 f"{cg.cg_map.n_atoms} atoms); give --backmapper for this map, or train")
            ala2 = is_ala2_five_bead(cg.cg_map, mapper_topology)
            if ala2:
                outputs.add(names["plot"], "Ramachandran plot", (".png",))
            # 1. training
            result = trainer.fit()
        finally:
            trainer.close()
        best = os.path.join(cfg.out, "best.pt")
        if not os.path.exists(best):
            raise ValueError("training gave no finite validation loss (no best.pt): try a smaller --lr")
        model = load_model(best)
        # 2. CG MD from the first training frame's beads
        calc = EqGNNCalculator(best, device=args.device, dtype="float32", domain_check="raise")
        atoms = beads_to_atoms(model, cg.train_positions[0])
        print(f"CG MD: {args.md_steps} Langevin steps of {args.timestep} fs at {args.temperature} K")
        try:
            frames, speed = run_cg_md(atoms, calc, args.temperature, args.timestep, args.md_steps,
                                      args.interval, seed=args.seed)
        except (OutOfDomainError, AtomsTooCloseError) as err:
            print(f"{PROG}: the CG MD stopped: {err}; nothing but the training run folder {cfg.out} "
                  "was written (try a shorter --timestep or a longer training)", file=sys.stderr)
            return EXIT_PHYSICS_STOP
        if len(frames) == 0:
            raise ValueError(f"--md-steps {args.md_steps} < --interval {args.interval}: no CG frame")
        # 3. back-mapping (with a back-mapper trained here on the same trajectory, if asked)
        if train_mapper:
            backmapper, trained = _train_backmapper(backmap_task)
            mapper = BackMapper.load(backmapper, device=args.device)
        xyz, backmap = backmap_report(frames, mapper, samples=args.samples, seed=args.seed,
                                      with_dihedrals=ala2)
        # the files
        import ase.io

        shutil.copyfile(best, outputs.start(names["model"]))
        ase.io.write(outputs.start(names["cg"]), [beads_to_atoms(model, x) for x in frames],
                     format="traj")
        write_all_atom(outputs.start(names["aa"]), xyz, mapper.topology)
        report = {"input": {"trajectory": args.traj, "map": args.map, "temperature_K": args.temperature,
                            "training_frames": len(trainer.train_samples),
                            "validation_frames": len(trainer.valid_samples)},
                  "training": {"model": args.model, "epochs": result.epochs,
                               "best_epoch": result.best_epoch, "stop_reason": result.stop_reason,
                               "valid_forces_mae_meV_per_A": result.best_metrics.get("forces_mae"),
                               "valid_forces_rmse_meV_per_A": result.best_metrics.get("forces_rmse")},
                  "cg_md": {**speed, "frames": int(len(frames)), "simulated_ps": speed["steps"] *
                            args.timestep / 1000.0},
                  "backmapping": {"backmapper": str(backmapper if train_mapper else args.backmapper),
                                  **backmap}}
        if train_mapper:
            report["backmapping"]["trained"] = trained
        if ala2:
            ref = rama.bead_phi_psi(cg.train_positions)
            report["fes"] = fes_report(frames, *ref)
            report["fes"]["reference"] = "the input trajectory's training frames, mapped to beads"
            rama.plot_side_by_side({"all-atom input": ref, "CG MD": rama.bead_phi_psi(frames)},
                                   outputs.start(names["plot"]), temperature_K=args.temperature)
        with open(outputs.start(names["report"]), "w") as f:
            f.write(json.dumps(report, indent=1, default=float) + "\n")
        outputs.commit()
    print(f"CG MD: {speed['steps']} steps, {speed['steps_per_s']:.0f} steps/s "
          f"({speed['ns_per_day']:.1f} ns/day), mean temperature {speed['temperature_mean_K']:.0f} K")
    print(f"back-mapped {len(xyz)} frames: valid bonds {backmap['valid_ratio']:.3f}, "
          f"clashes {backmap['clash_ratio']:.3f}")
    if ala2:
        fes = report["fes"]
        pops = ", ".join(f"{b} {100 * fes['populations'][b]:.1f}% (input "
                         f"{100 * fes['reference_populations'][b]:.1f}%)" for b in rama.BASINS)
        print(f"(phi, psi): {pops}; JS divergence {fes['js_divergence']:.3f}")
    runs = cfg.out + (f" and {backmap_task.cfg['out']}" if train_mapper else "")
    print("wrote " + ", ".join(outputs.written) + f" (training runs in {runs})")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    return run_command(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
