#!/bin/bash
# Evaluate a checkpoint or an exported model on one GPU (full and sparse inference modes).
#
#   sbatch slurm/eval.sh runs/300m                          # latest checkpoint of the run
#   sbatch slurm/eval.sh runs/300m/hf --mode sparse --block-count 8
#   SSA_DEVICE=cpu sbatch --gpus-per-node 0 slurm/eval.sh runs/demo      # CPU
#
# Arguments are passed to `ssa eval MODEL ...` unchanged (see `ssa eval --help`). `ssa eval` arrives with
# the evaluation issue; until then this job stops with ssa's "invalid choice" error.
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
[ $# -ge 1 ] || { echo "usage: sbatch slurm/eval.sh MODEL [ssa eval options]" >&2; exit 2; }
[ -e "$1" ] || { echo "eval.sh: model not found: $1 (relative to $PWD)" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export WANDB_MODE=${WANDB_MODE:-offline}
[ "${SSA_DEVICE:-gpu}" = cpu ] && export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu
echo "[eval.sh $(date '+%F %T') job ${SLURM_JOB_ID:-local}] ssa eval $*"
exec srun --ntasks=1 "${SSA:-ssa}" eval "$@"
