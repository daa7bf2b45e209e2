#!/usr/bin/env bash
# Elastic attention on one GPU in one run of about 4 minutes (torch 2.11, Python 3.12: the wheels in .whl/,
# installed by tools/gpu_setup.sh):
#   GIT_COMMIT=<sha> bash tools/gpu_elastic.sh "$OUT"
# 1. wheels + this package; 2. the GPU tests of mixed-head attention (tests/kernels/test_gpu.py) and of the
# export's elastic prefill (tests/hf/test_export_kernels.py); 3. tools/bench_elastic.py at the 1B shape with
# random weights: prefill at 32K and 128K tokens, full vs the routers' mix vs Ω = 0.5 vs sparse, and the
# routers' own time (OUT/bench_elastic.jsonl, one line per length).
set -uo pipefail
OUT=${1:-/tmp/gpu-elastic}
mkdir -p "$OUT"
. tools/gpu_setup.sh "$OUT" || exit 1
python3 -m pytest -q -m gpu tests/kernels/test_gpu.py tests/hf/test_export_kernels.py -k "mixed or elastic" \
    -p no:cacheprovider 2>&1 | tail -n 20 | tee "$OUT/gpu_tests.txt"
timeout "${BENCH_S:-400}" python3 tools/bench_elastic.py --append "$OUT/bench_elastic.jsonl" 2>&1 | tail -n 20 \
    | tee "$OUT/bench_elastic.txt"
