#!/bin/bash
# Convert a run's checkpoint to Hugging Face format (safetensors) on one node; no GPU needed.
#
#   sbatch slurm/convert.sh runs/300m                      # latest checkpoint -> runs/300m/hf
#   sbatch slurm/convert.sh runs/300m --step 5000 --out exports/300m-step5000
#
# Arguments are passed to `ssa convert RUN_DIR ...` unchanged (see `ssa convert --help`). `ssa convert`
# arrives with the Hugging Face export issue; until then this job stops with ssa's "invalid choice" error.
# Log: slurm-ssa-convert-JOB.out in the submit directory.
#
#SBATCH --job-name=ssa-convert
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=1:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: sbatch slurm/convert.sh RUN_DIR [ssa convert options]" >&2; exit 2; }
[ -d "$1" ] || { echo "convert.sh: run directory not found: $1 (relative to $PWD)" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
echo "[convert.sh $(date '+%F %T') job ${SLURM_JOB_ID:-local}] ssa convert $*"
exec srun --ntasks=1 "${SSA:-ssa}" convert "$@"
