"""Re-save the bundled model files in the current format, keeping their weights bit for bit.

Potentials (``ala2``, ``cu-emt``) get the SHA-256 digest and the training-domain record: per element
pair, the shortest distance in the frames they were trained on (the training split of the recipe in
``bundle_potentials.py``, neighbour lists at the model's cutoff; :mod:`ase_eqgnn.domain`). Their
config metadata is kept. The back-mapping model (``ala2``) gets the digest. Each file is written to a
temporary name, read back through the package's verifying loaders, compared tensor by tensor with
the original, and only then moved over it.

    python training/resave_bundled.py            # every bundled file
    python training/resave_bundled.py --check    # report only, write nothing

Running it again changes nothing but the ``package_version`` field.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Dict, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ase_eqgnn.cg.backmap import VERSION as BACKMAP_VERSION  # noqa: E402
from ase_eqgnn.cg.backmap import load_checkpoint  # noqa: E402
from ase_eqgnn.checkpoint import (DIGEST_KEY, CheckpointWarning, load_checkpoint_dict,  # noqa: E402
                                  load_model, save_model, write_checkpoint)
from ase_eqgnn.pretrained import list_pretrained, pretrained_path  # noqa: E402


def training_frames(name: str):
    """The frames the bundled potential ``name`` was fitted to: its recipe's data minus the
    validation split, as the trainer splits it."""
    from bundle_potentials import RECIPES

    from ase_eqgnn.data import read_dataset, split_dataset
    from ase_eqgnn.train import config_from_dict, load_config

    recipe = RECIPES[name]
    cfg = config_from_dict(dict(recipe["overrides"]), source="resave_bundled.py",
                           base=load_config(ROOT / recipe["config"]))
    frames = read_dataset(ROOT / cfg.data, energies=cfg.energies and ROOT / cfg.energies,
                          topology=cfg.topology and ROOT / cfg.topology, format=cfg.format,
                          energy_unit=cfg.energy_unit,
                          length_unit=cfg.length_unit, index=cfg.index)
    if cfg.valid_data or not cfg.valid_fraction:
        return frames
    train, _ = split_dataset(frames, cfg.valid_fraction, seed=cfg.seed,
                             contiguous=cfg.split == "contiguous")
    return train


def training_domain(frames, cutoff: float) -> Dict[str, float]:
    """Shortest distance per element pair over ``frames`` within ``cutoff`` Å."""
    from ase_eqgnn.domain import shortest_distances
    from ase_eqgnn.graph import AtomicGraph

    return shortest_distances(AtomicGraph.from_atoms(f.to_atoms()).with_neighbors(cutoff)
                              for f in frames)


def _quiet(fn, *args):
    with warnings.catch_warnings():  # older files warn that they lack the digest: we are adding it
        warnings.simplefilter("ignore", CheckpointWarning)
        return fn(*args)


def _same_tensors(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], what: str) -> None:
    if list(a) != list(b):
        raise RuntimeError(f"{what}: tensor names changed")
    for key in a:
        if a[key].dtype != b[key].dtype or not torch.equal(a[key], b[key]):
            raise RuntimeError(f"{what}: tensor {key} changed")


def resave_potential(src: Path, dst: Path, domain: Optional[Dict[str, float]]) -> None:
    """Write potential file ``src`` to ``dst`` in the current format with ``domain``, verified."""
    original = _quiet(load_checkpoint_dict, src)
    model = _quiet(load_model, src)
    model.domain = domain
    tmp = dst.with_name(dst.name + ".resave")
    save_model(model, tmp, metadata=original["config"].get("metadata"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CheckpointWarning)  # the new file must load silently
            again = load_checkpoint_dict(tmp)
            loaded = load_model(tmp)
        _same_tensors(original["state_dict"], again["state_dict"], str(src))
        assert loaded.domain == domain and loaded.config == model.config
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def resave_backmap(src: Path, dst: Path) -> None:
    """Write back-mapping file ``src`` to ``dst`` at the current version with a digest, verified."""
    original = _quiet(load_checkpoint, src)
    payload = {k: v for k, v in original.items() if k != DIGEST_KEY}
    payload["version"] = BACKMAP_VERSION
    tmp = dst.with_name(dst.name + ".resave")
    write_checkpoint(payload, tmp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CheckpointWarning)
            again = load_checkpoint(tmp)
        _same_tensors(original["model_state"], again["model_state"], str(src))
        for key in ("model_config", "cg_map", "topology_pdb", "meta"):
            if again[key] != original[key]:
                raise RuntimeError(f"{src}: {key} changed")
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compute and print, write nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from bundle_potentials import RECIPES

    for entry in list_pretrained("potential"):
        if entry["name"] not in RECIPES:  # e.g. ala2-cg, written in the current format by its script
            continue
        path = pretrained_path(entry["name"], "potential")
        model = _quiet(load_model, path)
        frames = training_frames(entry["name"])
        domain = training_domain(frames, model.cutoff)
        print(f"potential {entry['name']}: {len(frames)} training frames, domain {domain}")
        if not args.check:
            resave_potential(path, path, domain)
    for entry in list_pretrained("backmap"):
        path = pretrained_path(entry["name"], "backmap")
        print(f"back-mapping model {entry['name']}: {path.name}")
        if not args.check:
            resave_backmap(path, path)
    print("checked" if args.check else "re-saved")


if __name__ == "__main__":
    main()
