#!/usr/bin/env bash
# Context parallelism simulated on ONE GPU, in one run on a GPU machine (torch 2.11, Python 3.12;
# the wheels in .whl/ as for tools/gpu_check.sh, installed by tools/gpu_setup.sh):
#   GIT_COMMIT=<commit> bash tools/gpu_cp_sim.sh "$OUT"
# 1. GPU tests of what the simulation relies on (hard cap 150 s): the full-attention backend API (cuDNN /
#    flash backward from a merged lse) and every simulated CP rank against one process in bf16 (ring and
#    all-gather, P = 2 and 4: the Triton sparse kernel at query offsets) -> OUT/gpu_tests.txt;
# 2. tools/bench_cp.py --simulate 2 4 8 at 64K and 128K, ring and allgather, 32 q / 2 kv heads x 64, BS 16,
#    K 16 (hard cap SIM_TIMEOUT, default 240 s; each line is written as soon as it is measured)
#    -> OUT/bench_cp_sim.jsonl (one JSON line per length, P and comm), OUT/bench_cp_sim.txt (log + table).
# OUT/summary.txt: how each part ended. Exit status 0 when both parts did.
set -uo pipefail
OUT=${1:-/tmp/gpu-cp-sim}
SIM_TIMEOUT=${SIM_TIMEOUT:-240}
mkdir -p "$OUT"
. tools/gpu_setup.sh "$OUT" || exit 1

timeout -k 10 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/kernels/test_full_attention.py \
    tests/distributed/test_cp_simulated.py 2>&1 | tail -n 30 > "$OUT/gpu_tests.txt"
tests=${PIPESTATUS[0]}
echo "gpu tests: exit $tests" | tee "$OUT/summary.txt"

timeout -k 10 "$SIM_TIMEOUT" python3 tools/bench_cp.py --simulate 2 4 8 --seqlens 65536 131072 \
    --cp-comm ring allgather --repeats 3 --out "$OUT/bench_cp_sim.jsonl" > "$OUT/bench_cp_sim.txt" 2>&1
sim=$?
echo "bench_cp --simulate: exit $sim ($(wc -l < "$OUT/bench_cp_sim.jsonl" 2>/dev/null || echo 0) of 12 lines)" \
    | tee -a "$OUT/summary.txt"
tail -n 14 "$OUT/bench_cp_sim.txt" | tee -a "$OUT/summary.txt"
[ "$tests" -eq 0 ] && [ "$sim" -eq 0 ]
