#!/usr/bin/env bash
# Everything the GPU machine checks and times, in one call (the device time is short: one script).
#
#   bash benchmarks/gpu/fetch_wheels.sh          # here, once: wheels the GPU machine lacks -> .whl/
#   device run (carry .whl):  bash benchmarks/gpu/run.sh [SECONDS] [STEPS]
#
# STEPS: comma list of tests,profile,calculator,memory,neighbors (default all). Environment overrides:
# TESTS (pytest paths, default tests/), TOOLS (calculator.py --tools; MACE is left out by default:
# it adds about 70 s and was never the fastest anchor on 2026-11-28), MD_BUDGET and CALL_BUDGET (s).
# On an H200 the first full run took 400 s after a 30 s start (tests 56 s, profile 34 s, calculator
# with five tools 270 s, neighbours 40 s): with 15 minutes of device time, one full run and a rerun.
#
# Steps, each capped so the whole stays inside SECONDS (default 540); results land in $OUT:
#   env.txt      GPU, driver, torch and e3nn versions
#   tests.log    the fast test suite on the GPU machine (tests/test_cuda.py compares CUDA with CPU;
#                training tests there run on CUDA through device "auto")
#   profile.txt  where one call of ours goes on the GPU (benchmarks/gpu/profile_ours.py)
#   calc.json/.txt   benchmarks/calculator.py --device cuda: ours and the anchors side by side
#   memory.json/.txt benchmarks/memory.py --device cuda: peak memory with and without re-gathering
#   nl.json/.txt     benchmarks/neighbors.py --device cuda
set -u
LIMIT=${1:-540}
STEPS=${2:-tests,profile,calculator,memory,neighbors}
want() { [[ ",$STEPS," == *",$1,"* ]]; }
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
step() {  # step NAME CAP_SECONDS COMMAND...: run with min(CAP, time left - reserve) seconds
    local name=$1 cap=$2; shift 2
    local t=$(( $(left) - 10 )); [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt 20 ]; then echo "== $name skipped: $(left) s left"; return; fi
    echo "== $name (cap $t s, $(left) s left)"
    timeout -k 5 "$t" "$@"
    echo "== $name exit $? after $(( $(date +%s) - T0 )) s"
}
export PYTHONUNBUFFERED=1
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "$@"; }
pipi --target /tmp/site .whl/base/*.whl || exit 1
for a in schnetpack:spk nequip:nequip mace:mace; do
    [ -d ".whl/${a#*:}" ] && pipi --target "/tmp/anchors/${a%%:*}" .whl/"${a#*:}"/*.whl
done
export PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /dev/null 2>&1 ||
    echo "editable install failed (the console scripts are missing)"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, e3nn, ase; print('torch', torch.__version__, 'e3nn', e3nn.__version__,
                                              'ase', ase.__version__, 'cuda', torch.version.cuda)"
  nproc; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
echo "installed after $(( $(date +%s) - T0 )) s"

if want tests; then
    # shellcheck disable=SC2086
    step tests 150 python3 -m pytest -q -n 12 -p no:cacheprovider ${TESTS:-tests/} \
        > "$OUT/tests.log" 2>&1
    tail -25 "$OUT/tests.log"
fi
if want profile; then
    step profile 60 python3 benchmarks/gpu/profile_ours.py > "$OUT/profile.txt" 2>&1
    grep -v USDT "$OUT/profile.txt" | tail -45
fi
COMMON=(--device cuda --threads 16 --repeats 15 --warmup 3 --md-steps 100
        --call-budget-s "${CALL_BUDGET:-5}" --md-budget-s "${MD_BUDGET:-5}" --order tool --timeout 150
        --anchor-site /tmp/anchors)
want calculator && step calculator 330 python3 benchmarks/calculator.py "${COMMON[@]}" \
    --tools "${TOOLS:-ours-painn,ours-painn-graphs,ours-tp,ours-tp-graphs,schnetpack,nequip}" \
    --json "$OUT/calc.json" > "$OUT/calc.txt" 2>&1
want calculator && tail -32 "$OUT/calc.txt"
want memory && step memory 60 python3 benchmarks/memory.py --device cuda --threads 16 --sizes 6912 32000 \
    --json "$OUT/memory.json" > "$OUT/memory.txt" 2>&1
want memory && cat "$OUT/memory.txt"
want neighbors && step neighbors 90 python3 benchmarks/neighbors.py --device cuda --threads 16 --repeats 10 \
    --sizes 4000 32000 108000 864000 --skip ase,matscipy --json "$OUT/nl.json" > "$OUT/nl.txt" 2>&1
want neighbors && cat "$OUT/nl.txt"
echo "== all done after $(( $(date +%s) - T0 )) s"
