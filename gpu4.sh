set -uo pipefail
OUT=$1
export GIT_COMMIT=edc2ce1 OMP_NUM_THREADS=8 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
. tools/gpu_setup.sh "$OUT" >/dev/null || { echo setup failed; exit 1; }
python3 - <<'PY'
import json
c = json.load(open("configs/deepspeed/zero1.json")); c["bf16"]["immediate_grad_update"] = True
json.dump(c, open("/tmp/zero1-immediate.json", "w"), indent=1)
PY
B=(python3 tools/bench_train.py --out "$OUT/ds.jsonl" --variants full ssa --micro-batch 2 --warmup 2 --steps 4 --split)
timeout 75 "${B[@]}" 2>&1 | grep -E "^(variant|full|ssa) |Error"
timeout 75 "${B[@]}" train.deepspeed_config=/tmp/zero1-immediate.json 2>&1 | grep -E "^(variant|full|ssa) |Error"
echo "total ${SECONDS}s"
