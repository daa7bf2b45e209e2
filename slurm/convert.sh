#!/bin/bash
# Convert a run's checkpoint to Hugging Face format (safetensors) on one node; no GPU needed.
#
#   sbatch slurm/convert.sh runs/300m runs/300m/hf                                  # latest checkpoint
#   sbatch slurm/convert.sh runs/300m/checkpoints/step-005000 exports/300m-step5000 --overwrite
#
# Arguments are passed to `ssa convert RUN_DIR_OR_CHECKPOINT OUT_DIR [--overwrite]` unchanged (see
# `ssa convert --help`); the export is checked against the training model before OUT_DIR appears.
# Log: slurm-ssa-convert-JOB.out in the submit directory.
#
#SBATCH --job-name=ssa-convert
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=1:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: sbatch slurm/convert.sh RUN_DIR_OR_CHECKPOINT OUT_DIR [--overwrite]" >&2; exit 2; }
[ -d "$1" ] || { echo "convert.sh: run or checkpoint directory not found: $1 (relative to $PWD)" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
echo "[convert.sh $(date '+%F %T') job ${SLURM_JOB_ID:-local}] ssa convert $*"
exec srun --ntasks=1 "${SSA:-ssa}" convert "$@"
