#!/usr/bin/env bash
# Is an unstable SSA run the kernels' numerics or the method? Trains the replication's `ssa` run
# (configs/train/40m-2k.yaml) in several settings side by side on one GPU for a fixed time, same data order
# and seed, and keeps their metrics (docs/RESULTS.md, "Stability"):
#   beside the tree: .whl, data/build/tech-mix.jsonl.xz, data/build/tech-mix-tokenizer
#   bash tools/gpu_stability.sh OUT [SECONDS]
# Settings: `triton` (as trained), `reference` (the sparse branch on its PyTorch reference:
# SSA_KERNELS_REFERENCE=sparse_attention), `lr1e-3` (the released recipe's learning rate), `fp32`.
set -uo pipefail
OUT=${1:?usage: gpu_stability.sh OUT [SECONDS]}
TRAIN_S=${2:-240}
mkdir -p "$OUT"
. tools/gpu_setup.sh "$OUT" || exit 1
DATA=/tmp/tech-mix
bash tools/tech_mix_data.sh "$DATA" > /dev/null
RES=/tmp/stability && rm -rf "$RES" /tmp/stab-runs && mkdir -p "$RES"
common=(configs/train/40m-2k.yaml "data.dir=$DATA" train.log_interval=8 train.save_interval=100000
        logging.progress=false)
train() {  # NAME ENV... -- OVERRIDES...
    local name=$1; shift
    env "$@" timeout -s TERM "$TRAIN_S" ssa train "${common[@]}" --run-dir "/tmp/stab-runs/$name" \
        ${OVERRIDES[$name]:-} > "$RES/$name.log" 2>&1
    cp "/tmp/stab-runs/$name/metrics.jsonl" "$RES/$name.metrics.jsonl" 2>/dev/null
}
declare -A OVERRIDES=([lr1e-3]="train.lr=1.0e-3 train.min_lr=1.0e-4" [fp32]="train.precision=fp32")
train triton X=1 &
train reference SSA_KERNELS_REFERENCE=sparse_attention &
train lr1e-3 X=1 &
train fp32 X=1 &
wait
for f in "$RES"/*.metrics.jsonl; do
    python3 -c "
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(sys.argv[1].rsplit('/', 1)[-1], ' '.join(f\"{r['step']}:{r['ce']:.2f}/{r['align']:.3f}/{r['grad_norm']:.1f}\"
      for r in rows if 'ce' in r and r['step'] % 32 == 0))" "$f" | tee -a "$OUT/summary.txt"
done
tar -czf "$OUT/stability.tar.gz" -C "$RES" .
