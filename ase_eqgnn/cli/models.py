"""``eqgnn-models``: list the bundled potentials and back-mapping models."""

from __future__ import annotations

import argparse
import json

from ..pretrained import KINDS, list_pretrained

_SKIP = {"name", "kind", "file"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="eqgnn-models", description=__doc__)
    p.add_argument("--kind", choices=KINDS, help="only this kind")
    p.add_argument("--json", action="store_true", help="print the registry as JSON")
    args = p.parse_args(argv)
    entries = list_pretrained(args.kind)
    if args.json:
        print(json.dumps(entries, indent=1, ensure_ascii=False))
        return 0
    if not entries:
        print("no bundled models")
    for e in entries:
        print(f"{e['name']}  [{e['kind']}]  ({e['file']})")
        for key, value in e.items():
            if key not in _SKIP:
                print(f"    {key}: {json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
