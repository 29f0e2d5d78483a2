"""``eqgnn-models``: list the bundled potentials and back-mapping models."""

from __future__ import annotations

import json
import sys

from .common import command_parser, run_command

_SKIP = {"name", "kind", "file"}


def build_parser():
    from ..pretrained import KINDS

    p = command_parser("eqgnn-models", __doc__)
    p.add_argument("--kind", choices=KINDS, help="only this kind")
    p.add_argument("--json", action="store_true", help="print the registry as JSON")
    return p


def run(args) -> int:
    from ..pretrained import list_pretrained

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


def main(argv=None) -> int:
    return run_command(build_parser(), run, argv, owns_heap=False)


if __name__ == "__main__":
    sys.exit(main())
