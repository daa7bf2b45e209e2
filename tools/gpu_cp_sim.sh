#!/usr/bin/env bash
# Context parallelism simulated on ONE GPU, in one run on a GPU machine (torch 2.11, Python 3.12;
# the wheels in .whl/ as for tools/gpu_check.sh, installed by tools/gpu_setup.sh):
#   GIT_COMMIT=<commit> bash tools/gpu_cp_sim.sh "$OUT"
# 1. GPU tests of what the simulation and the training step rely on (cap 170 s): the full-attention backend
#    API (cuDNN / flash backward from a merged lse), every simulated CP rank against one process in bf16
#    (ring and all-gather, P = 2 and 4), the model on CUDA (fused SwiGLU against the plain one, the fused
#    linear cross-entropy against Megatron's) -> OUT/gpu_tests.txt;
# 2. the 1B training step at 64K tokens (tools/bench_train.py, ssa, train.recompute=full, micro-batch 1):
#    one GPU over the whole sequence, then CP rank 0 of 2 and of 4 simulated (`--simulate-cp`)
#    -> OUT/bench_cp_train.jsonl, the speed-ups in OUT/summary.txt;
# 3. with LAYER=1, tools/bench_cp.py --simulate 2 4 8 at 64K and 128K, ring and allgather (one SSA layer;
#    cap 240 s) -> OUT/bench_cp_sim.jsonl.
# OUT/summary.txt: how each part ended. Exit status 0 when every part did.
set -uo pipefail
OUT=${1:-/tmp/gpu-cp-sim}
BUDGET=${BUDGET:-480}
GRACE=5
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
SCRIPT=gpu_cp_sim MIN_PART_S=25
. tools/gpu_parts.sh  # say, part
. tools/gpu_setup.sh "$OUT" >/dev/null || { say "setup failed (wheels / editable install)"; exit 1; }
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

part gpu_tests 170 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/kernels/test_full_attention.py \
    tests/distributed/test_cp_simulated.py tests/model/test_gpu.py tests/model/test_head.py
tail -n 30 "$OUT/logs/gpu_tests.log" > "$OUT/gpu_tests.txt"

JSONL=$OUT/bench_cp_train.jsonl
STEP=(python3 tools/bench_train.py --out "$JSONL" --variants ssa --seq-len 65536 --micro-batch 1 --warmup 1
      --steps 2 train.recompute=full)
part step_1gpu 110 90 "${STEP[@]}"
part step_cp2 80 40 "${STEP[@]}" --simulate-cp 2
part step_cp4 60 0 "${STEP[@]}" --simulate-cp 4
python3 - "$JSONL" <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
ok = [r for r in rows if "step_ms" in r]
one = next((r for r in ok if r.get("simulate_cp", 1) == 1), None)
link = 300e9  # bytes/s per direction, NVLink on an H200 node
for r in ok:
    p = r.get("simulate_cp", 1)
    line = f"64K ssa recompute=full, CP {p}: {r['step_ms']:.1f} ms, {r['peak_mem_gib']:.1f} GiB"
    if one and p > 1:
        moved = r["cp_moved_bytes_per_step"] + r["zero_moved_bytes_per_step"]
        line += (f"; speed-up {one['step_ms'] / r['step_ms']:.3f}x, with every transfer exposed "
                 f"({moved / 2**20:.0f} MiB at {link / 1e9:.0f} GB/s) {one['step_ms'] / (r['step_ms'] + moved / link * 1e3):.3f}x")
    print(line)
for r in rows:
    if "step_ms" not in r:
        print(f"CP {r.get('simulate_cp', 1)}: " + ("out of memory" if r.get("oom") else r.get("error", "?")))
EOF

if [ "${LAYER:-0}" = 1 ]; then
    part layer_sim 240 0 python3 tools/bench_cp.py --simulate 2 4 8 --seqlens 65536 131072 \
        --cp-comm ring allgather --repeats 3 --out "$OUT/bench_cp_sim.jsonl"
fi
printf '%s\n' "${RESULTS[@]}" | tee -a "$OUT/summary.txt"
exit "$failed"
