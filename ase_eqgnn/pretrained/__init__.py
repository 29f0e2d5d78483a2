"""Registry of the small trained models bundled with the package.

One registry for both kinds of bundled file: ``potential`` (an :class:`~ase_eqgnn.EqGNNCalculator`
checkpoint) and ``backmap`` (a coarse-grain -> all-atom back-mapping model). The same name may exist
once per kind: ``EqGNNCalculator.from_pretrained("ala2")`` is the alanine-dipeptide potential,
``eqgnn-backmap --model ala2`` the alanine-dipeptide back-mapping model.

Entries live in ``registry.json`` next to this file (data, not code): a list of objects with
``name``, ``kind``, ``file`` and free-form descriptive fields (training data, model family, cutoff,
measured test errors) that ``eqgnn-models`` prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional

KINDS = ("potential", "backmap")
_HERE = Path(__file__).resolve().parent
_REGISTRY = _HERE / "registry.json"


def list_pretrained(kind: Optional[str] = None) -> List[Dict]:
    """Registry entries (dicts), optionally only those of one ``kind``."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    entries = json.loads(_REGISTRY.read_text()) if _REGISTRY.exists() else []
    return [e for e in entries if kind is None or e["kind"] == kind]


def pretrained_path(name: str, kind: str = "potential") -> Path:
    """Path of the bundled file called ``name`` of this ``kind``; ValueError listing the choices."""
    entries = list_pretrained(kind)
    for entry in entries:
        if entry["name"] == name:
            path = _HERE / entry["file"]
            if not path.exists():
                raise ValueError(f"bundled {kind} '{name}' is registered but its file {path} is "
                                 "missing: reinstall the package")
            return path
    names = ", ".join(e["name"] for e in entries) or "none"
    raise ValueError(f"no bundled {kind} called '{name}' (available: {names}); give a file path "
                     "or one of these names")


def resolve_model(name_or_path, kind: str = "potential") -> Path:
    """A path as given when it exists, else a bundled name of this ``kind``."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if path.suffix or "/" in str(name_or_path):
        raise ValueError(f"model file {name_or_path} does not exist")
    return pretrained_path(str(name_or_path), kind)


def register(entry: Dict) -> None:
    """Add or replace a registry entry (used by the scripts that train the bundled models)."""
    if entry.get("kind") not in KINDS or "name" not in entry or "file" not in entry:
        raise ValueError("an entry needs 'name', 'file' and 'kind' in " + str(KINDS))
    entries = [e for e in list_pretrained() if (e["name"], e["kind"]) != (entry["name"], entry["kind"])]
    entries.append(entry)
    entries.sort(key=lambda e: (e["kind"], e["name"]))
    tmp = _REGISTRY.with_name(_REGISTRY.name + ".tmp")  # a crash never leaves half a registry
    tmp.write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, _REGISTRY)
