#!/usr/bin/env bash
# Do the efficiency levers change what is learned? Two short runs of the 40M `ssa` config on the bundled
# corpus, side by side on one GPU, same seed, same data order, same steps:
#   reference: every lever off (the alignment loss's PyTorch reference, Megatron's plain SwiGLU and its
#              logits + cross-entropy);
#   fused:     the defaults (fused alignment loss, fused SwiGLU) and train.cross_entropy=fused (Liger's
#              fused linear cross-entropy when its wheel is in .whl).
#   bash tools/gpu_numerics.sh OUT        # beside the tree: .whl, data/build/tech-mix.jsonl.xz + -tokenizer
# OUT/numerics/{reference,fused}/: metrics.jsonl, config.yaml, status.json, train.log. Compare them with
#   python tools/numerics_report.py OUT/numerics      # the table and docs/img/levers-numerics.png
# STEPS (default 256) optimizer steps of 65,536 tokens, lr 1e-3 (the main replication set's). ISOLATE=1: four
# runs instead — the reference again (run-to-run noise) and each lever alone; ISOLATE=seeds: the reference, the
# fused alignment loss and the fused SwiGLU at train.seed=SEED (default 1234). OUT/numerics.tgz packs it all.
set -uo pipefail
OUT=${1:?usage: gpu_numerics.sh OUT}
STEPS=${STEPS:-256}
DATA=${DATA:-/tmp/tech-mix}
mkdir -p "$OUT/numerics"
. tools/gpu_setup.sh "$OUT" || exit 1
bash tools/tech_mix_data.sh "$DATA" > "$OUT/numerics/shards.txt" 2>&1 || exit 1
SEED=${SEED:-1234}
common=(configs/train/40m-2k.yaml "data.dir=$DATA" "train.steps=$STEPS" train.lr=1.0e-3 train.min_lr=1.0e-4 "train.seed=$SEED"
        train.log_interval=4 "train.eval_interval=$((STEPS / 2))" "train.save_interval=$STEPS" logging.progress=false)
train() {  # NAME ENV... -- OVERRIDES...: one run, its small files copied to OUT
    local name=$1 run=/tmp/numerics-$SEED/$1
    shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    rm -rf "$run"
    env "${envs[@]}" ssa train "${common[@]}" "$@" --run-dir "$run" > "$OUT/numerics/$name.log" 2>&1
    local rc=$?
    mkdir -p "$OUT/numerics/$name"
    cp "$run"/{metrics.jsonl,config.yaml,status.json} "$OUT/numerics/$name/" 2>/dev/null
    mv "$OUT/numerics/$name.log" "$OUT/numerics/$name/train.log"
    echo "$name: exit $rc" | tee -a "$OUT/summary.txt"
}
off=(train.fused_elementwise=false train.cross_entropy=megatron)
if [ "${ISOLATE:-0}" = seeds ]; then  # the reference and the two levers that moved its curve, at SEED
    train reference SSA_KERNELS_REFERENCE=alignment_loss -- "${off[@]}" &
    train alignment-fused -- "${off[@]}" &
    train elementwise-fused SSA_KERNELS_REFERENCE=alignment_loss -- "${off[@]}" train.fused_elementwise=true &
elif [ "${ISOLATE:-0}" = 1 ]; then  # which lever: the reference twice (the run-to-run noise), each lever alone
    train reference-2 SSA_KERNELS_REFERENCE=alignment_loss -- "${off[@]}" &
    train alignment-fused -- "${off[@]}" &
    train elementwise-fused SSA_KERNELS_REFERENCE=alignment_loss -- "${off[@]}" train.fused_elementwise=true &
    train ce-fused SSA_KERNELS_REFERENCE=alignment_loss -- "${off[@]}" train.cross_entropy=fused &
else
    train reference SSA_KERNELS_REFERENCE=alignment_loss -- "${off[@]}" &
    train fused -- train.fused_elementwise=true train.cross_entropy=fused &
fi
wait
tar czf "$OUT/numerics.tgz" -C "$OUT" numerics  # more files than a call brings back one by one
tail -n 3 "$OUT"/numerics/*/train.log | tee -a "$OUT/summary.txt"
