#!/usr/bin/env bash
# GPU checks of the training stack on a GPU machine (torch 2.11, Python 3.12, no megatron/deepspeed):
#   the wheels in .whl/ (megatron-core 0.19.2, deepspeed 0.19.8, pydantic, webdataset, ...:
#   see docs/DEVELOPMENT.md)
#   bash tools/gpu_check.sh "$OUT"
# 1. installs the wheels and this package, prints versions; 2. GPU tests (model, kernels); 3. a bf16
# DeepSpeed training run of the tiny config on the bundled corpus; 4. 1B steps at 8K tokens (bench_train).
set -uo pipefail
OUT=${1:-/tmp/gpu-check}
mkdir -p "$OUT"
. tools/gpu_setup.sh "$OUT" || exit 1  # wheels, this package, versions.txt

python3 -m pytest -q -m gpu ${GPU_TESTS:-tests/} -p no:cacheprovider 2>&1 | tail -n 25 | tee "$OUT/gpu_tests.txt"

ssa data prepare --out /tmp/data > /dev/null
ssa train configs/train/tiny-cpu.yaml --run-dir /tmp/run-tiny data.dir=/tmp/data train.steps=200 \
    logging.progress=false 2>&1 | grep -E "^step|error|Error" | tail -n 25 | tee "$OUT/train_tiny.txt"
cp /tmp/run-tiny/metrics.jsonl "$OUT/train_tiny_metrics.jsonl" 2>/dev/null

if [ -f tools/bench_train.py ]; then
    python3 tools/bench_train.py --out "$OUT/bench_train.jsonl" ${BENCH_TRAIN_ARGS:-} 2>&1 | tail -n 30 | tee "$OUT/bench_train.txt"
fi
