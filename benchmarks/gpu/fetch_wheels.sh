#!/usr/bin/env bash
# Download, into .whl/ of this checkout (git-ignored through .git/info/exclude), the wheels that the
# GPU machine (Python 3.12, x86-64, no network) lacks for benchmarks/gpu/run.sh:
#   .whl/base    ase, mdtraj, tables, vesin, vesin-torch, matscipy (ours and the tests)
#   .whl/spk     SchNetPack 2.0.4 and what it imports beyond the machine's image
#   .whl/nequip  NequIP 0.19.1 with e3nn 0.6.0
#   .whl/mace    mace-torch 0.3.16 with e3nn 0.4.4
# Two pure-Python packages exist only as source (antlr4-python3-runtime 4.9.3, python-hostlist):
# they are built into wheels here. About 37 MB in all; the device call carries ".whl".
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
plats=()
for p in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014; do
    plats+=(--platform "${p}_x86_64")
done
get() {  # folder, then packages
    local dir=".whl/$1"; shift
    mkdir -p "$dir"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plats[@]}" -d "$dir" "$@"
}
build() {  # folder, then source-only pure-Python packages
    local dir=".whl/$1"; shift
    mkdir -p "$dir"
    python3 -m pip wheel -q --no-deps -w "$dir" "$@"
}
get base ase==3.29.0 mdtraj==1.11.2 vesin==0.6.2 vesin-torch==0.6.2 matscipy==1.3.1 tables numexpr \
    blosc2 ndindex platformdirs
get spk schnetpack==2.0.4 hydra-core==1.3.8 omegaconf==2.3.1 hydra-colorlog==1.2.0 colorlog dirsync \
    fasteners torch-ema==0.3
build spk antlr4-python3-runtime==4.9.3
get nequip nequip==0.19.1 e3nn==0.6.0 hydra-core==1.3.8 omegaconf==2.3.1 lmdb
build nequip antlr4-python3-runtime==4.9.3
get mace mace-torch==0.3.16 e3nn==0.4.4 ConfigArgParse GitPython gitdb smmap torch-ema==0.3 \
    prettytable wcwidth orjson lmdb
build mace python-hostlist
du -sh .whl
