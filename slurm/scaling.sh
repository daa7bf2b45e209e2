#!/bin/bash
# Scaling sweep of SSA training on one host: tools/bench_scaling.py under torchrun on 1, 2, 4 and 8 GPUs, in
# every layout (CP; TP=2 x CP; DP=2 x CP) and at every sequence length; then the first-5-loss check of each
# multi-GPU line against the 1-GPU line, and the cost model's prediction next to what was measured.
#
#   sbatch slurm/scaling.sh                                 # one node x 8 GPUs: 1b, 32K / 64K / 128K
#   bash slurm/scaling.sh                                   # the same without Slurm, on this machine's GPUs
#   GPUS="1 2" SEQLENS="65536 131072" RECOMPUTE=none bash slurm/scaling.sh --steps 3
#   SSA_DEVICE=cpu GPUS="1 2" MODEL=configs/model/tiny.yaml SEQLENS=256 \
#       bash slurm/scaling.sh --vocab-size 0 --warmup 1 --steps 4         # CPU dry run (gloo)
#
# Environment: GPUS (process counts, default "1 2 4 8"), LAYOUTS (default "cp tp2-cp dp2-cp"), SEQLENS
# (default "32768 65536 131072"), MODEL (default configs/model/1b.yaml), RECOMPUTE (train.recompute of every
# run, default selective: by the cost model, the 1-GPU 32K and CP=2 128K points fit an H200 only with it),
# HARDWARE (the cost model's machine: h200 or h100), OUT (results folder, default runs/scaling-<job id or
# time>), RUN_TIMEOUT (seconds per torchrun, default 3600), SSA_PYTHON.
# Arguments go to every bench_scaling.py call: its options and dotted config overrides.
#
# Work per step, every layout: 2 sequences (bench_scaling's --global-batch), e.g. 2 x 131,072 = 262,144 tokens
# at 128K; on N GPUs each rank of CP = N holds 131,072 / N tokens of a sequence. One torchrun per (GPUs,
# layout) runs the lengths in increasing order and writes each line when it is measured, so a length that
# does not fit in memory ends that run but keeps the shorter ones; failures are listed at the end.
# Results: OUT/bench_scaling.jsonl (all lines), OUT/logs/<layout>-<gpus>.log, OUT/summary.txt.
#
#SBATCH --job-name=ssa-scaling
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1            # torchrun starts the ranks
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --time=6:00:00
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail

GPUS=${GPUS:-1 2 4 8}
LAYOUTS=${LAYOUTS:-cp tp2-cp dp2-cp}
SEQLENS=${SEQLENS:-32768 65536 131072}
MODEL=${MODEL:-configs/model/1b.yaml}
RECOMPUTE=${RECOMPUTE:-selective}
HARDWARE=${HARDWARE:-h200}
OUT=${OUT:-runs/scaling-${SLURM_JOB_ID:-$(date +%Y%m%d-%H%M%S)}}
PYTHON=${SSA_PYTHON:-python}
RESULTS=$OUT/bench_scaling.jsonl
mkdir -p "$OUT/logs"
say() { echo "[scaling.sh $(date '+%F %T')] $*" | tee -a "$OUT/summary.txt"; }

# A copy of the tree may have no .git: name the commit once, here.
export GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if [ "${SSA_DEVICE:-gpu}" = cpu ]; then
    export DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES=""  # gloo; no GPU is touched
else
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead rank ends the run
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}  # as slurm/pretrain.sh
fi

say "gpus=[$GPUS] layouts=[$LAYOUTS] seqlens=[$SEQLENS] model=$MODEL recompute=$RECOMPUTE" \
    "commit=$GIT_COMMIT args=${*:-none}"
failed=()
for n in $GPUS; do
    for layout in $LAYOUTS; do
        if [ "$n" = 1 ] && [ "$layout" != cp ]; then continue; fi            # one GPU: one layout
        if [ "$layout" != cp ] && [ $((n % 2)) != 0 ]; then continue; fi     # TP=2 / DP=2: even counts
        log=$OUT/logs/$layout-$n.log
        say "$layout on $n: $log"
        # shellcheck disable=SC2086  # SEQLENS is a list
        if ! timeout "${RUN_TIMEOUT:-3600}" "$PYTHON" -m torch.distributed.run --standalone \
            --nproc-per-node "$n" tools/bench_scaling.py --layout "$layout" --model "$MODEL" \
            --seqlens $SEQLENS --run-dir "$OUT/runs" --out "$RESULTS" "train.recompute=$RECOMPUTE" "$@" \
            >"$log" 2>&1; then
            failed+=("$layout on $n GPUs: $(tail -n 2 "$log" | tr '\n' ' ' | cut -c1-300) (all: $log)")
        fi
    done
done

if [ -f "$RESULTS" ]; then
    grep '"world_size": 1,' "$RESULTS" >"$OUT/one-gpu.jsonl"
    grep -v '"world_size": 1,' "$RESULTS" >"$OUT/multi-gpu.jsonl"
    say "first 5 losses of every multi-GPU line against the 1-GPU line of its length:"
    "$PYTHON" tools/bench_scaling.py --compare "$OUT/one-gpu.jsonl" "$OUT/multi-gpu.jsonl" 2>/dev/null \
        | tee -a "$OUT/summary.txt"
    say "cost model (docs/SCALING.md) next to the measured lines:"
    # shellcheck disable=SC2086  # GPUS, SEQLENS are lists
    "$PYTHON" tools/scaling_model.py --model "$MODEL" --gpus $GPUS --seqlens $SEQLENS \
        --recompute "$RECOMPUTE" --hardware "$HARDWARE" --measured "$RESULTS" | tee -a "$OUT/summary.txt"
fi
for f in "${failed[@]}"; do say "FAILED: $f"; done
say "results: $RESULTS"
[ ${#failed[@]} = 0 ]
