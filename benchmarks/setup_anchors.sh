#!/usr/bin/env bash
# Create the three anchor virtual environments used by benchmarks/calculator.py.
#
#   bash benchmarks/setup_anchors.sh [ANCHORS_DIR]      (default /work/anchors)
#
# Each anchor lives in its own venv OUTSIDE the repository, because their pins
# conflict (mace-torch 0.3.16 pins e3nn 0.4.4, nequip 0.19.1 needs e3nn 0.6.0).
# torch==2.13.0 is installed FIRST in every venv so that pip keeps the local CPU
# wheel and does not pull a CUDA build as a dependency of the anchor package.
set -euo pipefail
DIR="${1:-/work/anchors}"
PY="${PYTHON:-python3}"
mkdir -p "$DIR"

make_venv() {  # name, then the pip requirements for it
    local name="$1"; shift
    if [ ! -x "$DIR/$name/bin/python" ]; then
        "$PY" -m venv "$DIR/$name"
    fi
    "$DIR/$name/bin/python" -m pip install --upgrade pip wheel
    "$DIR/$name/bin/python" -m pip install "torch==2.13.0"
    "$DIR/$name/bin/python" -m pip install "$@" "torch==2.13.0"
}

# SchNetPack 2.0.4 (PaiNN anchor; SpkCalculator in schnetpack.interfaces.ase_interface)
make_venv schnetpack "schnetpack==2.0.4" "ase"
# NequIP 0.19.1 with e3nn 0.6.0 (tensor-product anchor; nequip.ase.NequIPCalculator)
make_venv nequip "nequip==0.19.1" "e3nn==0.6.0" "ase"
# MACE (mace-torch 0.3.16, which pins e3nn 0.4.4; mace.calculators.MACECalculator)
make_venv mace "mace-torch==0.3.16" "e3nn==0.4.4" "ase"

for n in schnetpack nequip mace; do
    echo "== $n"; "$DIR/$n/bin/python" -m pip freeze | grep -iE '^(torch|e3nn|schnetpack|nequip|mace-torch|ase)=='
done
