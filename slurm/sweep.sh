#!/bin/bash
# Plan an ablation grid and submit it as ONE Slurm job array; each element is a normal pretrain run.
#
#   slurm/sweep.sh configs/sweeps/ssa-ablation.yaml sweeps/ablation --max-parallel 4
#   slurm/sweep.sh GRID OUT train.steps=2000 -- --nodes 2 --time 12:00:00 -p gpu   # overrides; sbatch options
#   SSA_DEVICE=cpu slurm/sweep.sh configs/sweeps/tiny-cpu.yaml /tmp/sw -- --ntasks-per-node 2 --gpus-per-node 0
#
# Run it on a login node from the repository root (not through sbatch). It writes OUT/plan.json and
# OUT/runs/<name>/config.yaml (`ssa sweep plan`), then submits
#     sbatch --array=0-(n-1)%N slurm/pretrain.sh --plan OUT/plan.json
# Element K trains run K of the plan in OUT/runs/<name> (slurm/pretrain.sh: signals, requeue, resume and
# logs work as for a single run; the array's own output goes to OUT/logs/JOB_K.out). The job id and the
# exact sbatch command are appended to OUT/jobs.txt. Arguments after `--` go to sbatch and override
# pretrain.sh's #SBATCH defaults for every element (each element gets the resources of one run).
#
# A failed element is resubmitted alone with the same command and --array=K (it resumes its run directory
# from its latest checkpoint, or starts it); `ssa sweep status OUT` prints that command for failed runs:
#     sbatch --array=3 --output='OUT/logs/%A_%a.out' ... slurm/pretrain.sh --plan OUT/plan.json
# Follow the sweep with `ssa sweep status OUT`, collect it with `ssa sweep report OUT`.
set -euo pipefail

usage() { sed -n '2,22p' "$0"; exit "${1:-2}"; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${SSA_PYTHON:-python}

[ $# -ge 2 ] || usage
case "$1" in -h|--help) usage 0 ;; esac
GRID=$1 OUT=$2
shift 2
MAX_PARALLEL=${SSA_MAX_PARALLEL:-4}
OVERRIDES=() SBATCH_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --max-parallel) MAX_PARALLEL=${2:?--max-parallel needs a number}; shift 2 ;;
        --max-parallel=*) MAX_PARALLEL=${1#*=}; shift ;;
        --) shift; SBATCH_ARGS=("$@"); break ;;
        *=*) OVERRIDES+=("$1"); shift ;;
        *) echo "sweep.sh: unexpected argument '$1' (sbatch options go after --)" >&2; usage ;;
    esac
done
[[ "$MAX_PARALLEL" =~ ^[1-9][0-9]*$ ]] || { echo "sweep.sh: --max-parallel must be >= 1" >&2; exit 2; }

# 1. Plan: validates every run's config before anything is submitted (prints one line per run).
"$PYTHON" -m ssa_pretrain.cli sweep plan "$GRID" "${OVERRIDES[@]}" --out "$OUT"
OUT=$(cd "$OUT" && pwd)
N=$("$PYTHON" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["runs"]))' "$OUT/plan.json")
mkdir -p "$OUT/logs"

# 2. One job array, at most MAX_PARALLEL elements at a time.
CMD=(sbatch --parsable --array="0-$((N - 1))%$MAX_PARALLEL" --job-name="sweep-$(basename "$OUT")"
     --output="$OUT/logs/%A_%a.out" "${SBATCH_ARGS[@]}" "$HERE/pretrain.sh" --plan "$OUT/plan.json")
rc=0
JOB=$("${CMD[@]}") || rc=$?  # with `-- --wait`: the highest exit code of the elements
JOB=${JOB%%;*}  # --parsable prints "jobid[;cluster]"
[ -n "$JOB" ] || { echo "sweep.sh: sbatch failed ($rc)" >&2; exit "${rc/#0/1}"; }
printf '%s\t%s\n' "$JOB" "$(printf '%q ' "${CMD[@]:0:1}" "${CMD[@]:2}" | sed 's/ $//')" >> "$OUT/jobs.txt"
echo "submitted array job $JOB: $N runs, at most $MAX_PARALLEL at a time; logs in $OUT/logs"
echo "follow: ssa sweep status $OUT     collect: ssa sweep report $OUT"
echo "$JOB"
exit "$rc"
