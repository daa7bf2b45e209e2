#!/bin/bash
# Evaluate a Hugging Face export (the OUT_DIR of `ssa convert`) on one GPU: full vs sparse attention.
#
#   sbatch slurm/eval.sh ppl runs/300m/hf --data data/build/default --out eval/300m-ppl \
#       --lengths 1024 4096 8192 --block-counts 2 4 8 16 32
#   sbatch slurm/eval.sh sparsity runs/300m/hf --data data/build/default --out eval/300m-sparsity
#   sbatch slurm/eval.sh niah runs/300m/hf --out eval/300m-niah --lengths 8192 16384 32768 \
#       --rope-scaling llama3 --rope-factor 4
#   SSA_DEVICE=cpu sbatch --gpus-per-node 0 slurm/eval.sh ppl hf/demo --data data/build/default --out eval/demo
#
# Arguments are passed to `ssa eval {ppl,sparsity,niah} HF_DIR ...` unchanged (see `ssa eval ppl --help`).
# Each writes NAME.json, NAME.md and NAME.png into --out, which appears only when the run succeeds.
# Log: slurm-ssa-eval-JOB.out in the submit directory.
#
#SBATCH --job-name=ssa-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=4:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
usage="usage: sbatch slurm/eval.sh {ppl,sparsity,niah} HF_DIR --out OUT [ssa eval options]"
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
case "$1" in ppl | sparsity | niah) ;; *) echo "eval.sh: unknown evaluation '$1'; $usage" >&2; exit 2 ;; esac
[ -d "$2" ] || { echo "eval.sh: model directory not found: $2 (relative to $PWD)" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
[ "${SSA_DEVICE:-gpu}" = cpu ] && export CUDA_VISIBLE_DEVICES=""
echo "[eval.sh $(date '+%F %T') job ${SLURM_JOB_ID:-local}] ssa eval $*"
exec srun --ntasks=1 "${SSA:-ssa}" eval "$@"
