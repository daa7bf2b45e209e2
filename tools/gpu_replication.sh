#!/usr/bin/env bash
# Train and evaluate runs of the replication sweep (configs/sweeps/replication-40m.yaml) on one GPU in one
# go, for a machine that keeps nothing between runs (docs/RESULTS.md):
#   beside the tree: .whl (see tools/gpu_setup.sh), data/build/tech-mix.jsonl.xz and
#   data/build/tech-mix-tokenizer
#   bash tools/gpu_replication.sh OUT "full sparse ssa"          # the runs to do, 3 at a time on the GPU
# 1. wheels + this package; 2. shards of the corpus (16 workers); 3. `ssa sweep plan` + `ssa sweep run`;
# 4. as each run completes: `ssa convert` and the `ssa eval` set (ppl 2K/4K/8K with and without 4x RoPE
# scaling, the budget curve, sparsity, needle-in-a-haystack); 5. `ssa sweep report`. Everything small
# (metrics, configs, eval outputs, logs) is packed into OUT/results.tar.gz; checkpoints stay behind.
# BUDGET_S (default 560) bounds the whole script: training is signalled (it saves and stops) and
# evaluations are cut so that packing always happens. For a dry run on a CPU with a tiny setting:
#   SETUP=0 DEVICE=cpu DATA=... OVERRIDES="train.steps=4 ..." LENGTHS="128 256" NIAH_LENGTHS=256 \
#   SPARSITY_LENGTH=128 bash tools/gpu_replication.sh /tmp/dry "full ssa"
set -uo pipefail
OUT=${1:?usage: gpu_replication.sh OUT "RUN ..."}
RUNS=${2:-"full sparse ssa"}
DEADLINE=$((SECONDS + ${BUDGET_S:-560}))
DEVICE=${DEVICE:-cuda}
LENGTHS=${LENGTHS:-"2048 4096 8192"}
NIAH_LENGTHS=${NIAH_LENGTHS:-"2048 4096"}
SPARSITY_LENGTH=${SPARSITY_LENGTH:-2048}
mkdir -p "$OUT"
if [ "${SETUP:-1}" = 1 ]; then . tools/gpu_setup.sh "$OUT" || exit 1; fi
left() { echo $((DEADLINE - SECONDS)); }
log() { echo "[$(date -u +%T) +${SECONDS}s] $*" | tee -a "$OUT/summary.txt"; }

DATA=${DATA:-/tmp/tech-mix}
SWEEP=/tmp/repl
RESULTS=/tmp/repl-results
rm -rf "$RESULTS" /tmp/hf
mkdir -p "$RESULTS"
if [ "$DEVICE" = cuda ]; then  # the fused alignment loss against its reference, before any run trusts it
    "${ALIGNMENT_GPU_TEST[@]}" > "$RESULTS/alignment_gpu_test.txt" 2>&1 \
        || { log "fused alignment loss failed its GPU test: the runs use its reference"
             export SSA_KERNELS_REFERENCE=alignment_loss; }
fi
bash tools/tech_mix_data.sh "$DATA" | tee "$RESULTS/shards.txt"
log "shards ready"
# shellcheck disable=SC2086
ssa sweep plan configs/sweeps/replication-40m.yaml --out "$SWEEP" "data.dir=$DATA" ${OVERRIDES:-} \
    > "$RESULTS/plan.txt" 2>&1 || { cat "$RESULTS/plan.txt"; exit 1; }

evaluate() {  # NAME: convert its run, then the eval set; each step bounded by the time left
    local name=$1 run=$SWEEP/runs/$1 hf=/tmp/hf/$1 ev=$RESULTS/eval/$1
    mkdir -p "$ev"
    timeout "$(left)" ssa convert "$run" "$hf" > "$ev/convert.txt" 2>&1 || { log "$name: convert failed"; return; }
    local common=(--device "$DEVICE" --overwrite)
    timeout "$(left)" ssa eval ppl "$hf" --data "$DATA" --out "$ev/ppl" "${common[@]}" \
        --lengths $LENGTHS --block-counts 1 2 4 16 32 > "$ev/ppl.txt" 2>&1
    timeout "$(left)" ssa eval ppl "$hf" --data "$DATA" --out "$ev/ppl-rope4" "${common[@]}" \
        --lengths $LENGTHS --rope-scaling llama3 --rope-factor 4 > "$ev/ppl-rope4.txt" 2>&1
    timeout "$(left)" ssa eval sparsity "$hf" --data "$DATA" --out "$ev/sparsity" "${common[@]}" \
        --length "$SPARSITY_LENGTH" --windows 8 > "$ev/sparsity.txt" 2>&1
    timeout "$(left)" ssa eval niah "$hf" --out "$ev/niah" "${common[@]}" --lengths $NIAH_LENGTHS \
        --trials 8 > "$ev/niah.txt" 2>&1
    log "$name: evaluated ($(ls "$ev" | tr '\n' ' '))"
}

# shellcheck disable=SC2086
timeout -s TERM "$(( $(left) - 60 ))" ssa sweep run "$SWEEP" --max-parallel 3 --only $RUNS \
    > "$RESULTS/sweep_run.txt" 2>&1 &
runner=$!
declare -A evaluated=()
while :; do
    for name in $RUNS; do
        if [ -z "${evaluated[$name]:-}" ] && grep -qs '"completed"' "$SWEEP/runs/$name/status.json"; then
            evaluated[$name]=1
            log "$name: trained"
            evaluate "$name" &
        fi
    done
    kill -0 "$runner" 2>/dev/null || break
    sleep 5
done
wait "$runner"; log "sweep runner exit $?"
wait  # the evaluations
ssa sweep report "$SWEEP" --no-slurm > "$RESULTS/report.txt" 2>&1
for name in $RUNS; do
    mkdir -p "$RESULTS/runs/$name"
    cp "$SWEEP/runs/$name"/{metrics.jsonl,config.yaml,status.json,train.log} "$RESULTS/runs/$name/" 2>/dev/null
done
cp -r "$SWEEP"/report* "$SWEEP"/plots "$RESULTS/" 2>/dev/null
tar -czf "$OUT/results.tar.gz" -C "$RESULTS" .
log "packed $(du -h "$OUT/results.tar.gz" | cut -f1)"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$OUT/summary.txt" 2>&1
