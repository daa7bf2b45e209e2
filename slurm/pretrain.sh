#!/bin/bash
# Pretrain one SSA model on Slurm: one task per GPU through srun, any number of nodes.
#
#   sbatch slurm/pretrain.sh configs/train/300m-8k.yaml                         # 1 node x 8 GPUs
#   sbatch --nodes 4 slurm/pretrain.sh configs/train/1b-8k.yaml train.steps=20000   # 4 x 8 = 32 GPUs
#   sbatch --nodes 2 --ntasks-per-node 4 --gpus-per-node 4 slurm/pretrain.sh CONFIG --run-dir runs/x
#   RUN_DIR=runs/x sbatch -p gpu -t 2:00:00 slurm/pretrain.sh CONFIG ssa.full_ratio=0.25
#   SSA_DEVICE=cpu sbatch --ntasks-per-node 2 --gpus-per-node 0 slurm/pretrain.sh CONFIG   # CPU / gloo (CI)
#   sbatch --array=0-7%4 slurm/pretrain.sh --plan SWEEP/plan.json      # sweep element $SLURM_ARRAY_TASK_ID
#
# Arguments: CONFIG [--run-dir DIR] [section.key=value ...]  (RUN_DIR env var = --run-dir; default
# runs/<config name>), or --plan PLAN.json [section.key=value ...] inside a job array (written by
# `ssa sweep plan`; element $SLURM_ARRAY_TASK_ID gives the config and the run directory).
# Paths are relative to the submit directory (run sbatch from the repository root).
#
# Batch arithmetic stays in the config: global_batch_size = micro_batch_size x (nodes x GPUs per node / tp)
# x accumulation, e.g. 64 = 2 x 8 x 4 for configs/train/300m-8k.yaml on one 8-GPU node.
#
# Time limit and preemption: Slurm sends USR1 to this batch shell 120 s before the limit (--signal=B:…;
# `scancel --batch --signal=USR1 JOBID` does the same by hand). The shell forwards it to the training step,
# every rank saves a checkpoint at the next step boundary and exits 0, status.json says "stopped", and the
# job requeues itself (`scontrol requeue`); the rerun resumes from the run directory's latest checkpoint.
# Set SSA_REQUEUE=0 to stop instead. Raise @120 when one step + a checkpoint take longer than ~2 minutes.
#
# Logs: RUN_DIR/logs/launcher.log (this script), RUN_DIR/logs/train-JOB[-rRESTART].log (all ranks,
# prefixed with their rank). The --output file below gets the same launcher lines.
#
#SBATCH --job-name=ssa-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8            # one task per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12             # data loading + host work per GPU; ~ node cores / GPUs
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120            # B: to this batch shell, which forwards it to the training step
#SBATCH --requeue
#SBATCH --open-mode=append             # requeued reruns append to the same output file
#SBATCH --output=slurm-%x-%j.out
set -uo pipefail

die() { echo "pretrain.sh: error: $*" >&2; exit 2; }

# ------------------------------------------------------------------ arguments
PLAN="" CONFIG="" ARGS=()
RUN_DIR=${RUN_DIR:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --run-dir) RUN_DIR=${2:?--run-dir needs a directory}; shift 2 ;;
        --run-dir=*) RUN_DIR=${1#*=}; shift ;;
        --plan) PLAN=${2:?--plan needs a plan.json}; shift 2 ;;
        --plan=*) PLAN=${1#*=}; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *=*) ARGS+=("$1"); shift ;;
        *) [ -z "$CONFIG" ] || die "unexpected argument '$1' (config is already $CONFIG)"; CONFIG=$1; shift ;;
    esac
done
PYTHON=${SSA_PYTHON:-python}

if [ -n "$PLAN" ]; then
    [ -z "$CONFIG" ] || die "give either CONFIG or --plan, not both"
    [ -n "${SLURM_ARRAY_TASK_ID:-}" ] || die "--plan needs a job array element (sbatch --array=K ...)"
    [ -f "$PLAN" ] || die "plan not found: $PLAN (write it with: ssa sweep plan GRID.yaml --out DIR)"
    # Element K of the plan: "CONFIG<TAB>RUN_DIR", both absolute (they are relative to the plan's folder).
    entry=$("$PYTHON" -m ssa_pretrain.cli sweep lookup "$PLAN" "$SLURM_ARRAY_TASK_ID") || exit 2
    IFS=$'\t' read -r CONFIG RUN_DIR <<<"$entry"
fi
[ -n "$CONFIG" ] || die "no config given; usage: sbatch slurm/pretrain.sh CONFIG [--run-dir DIR] [key=value ...]"
[ -f "$CONFIG" ] || die "config not found: $CONFIG (paths are relative to the submit directory $PWD)"
RUN_DIR=${RUN_DIR:-runs/$(basename "${CONFIG%.*}")}
mkdir -p "$RUN_DIR/logs"

JOB=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
JOB=${JOB:-${SLURM_JOB_ID:-local}}
RESTART=${SLURM_RESTART_COUNT:-0}
LOG=$RUN_DIR/logs/launcher.log
say() { echo "[pretrain.sh $(date '+%F %T') job $JOB restart $RESTART] $*" | tee -a "$LOG"; }

# ------------------------------------------------------------------ environment
# Rendezvous: rank 0 runs on the first node; the port is derived from the job id so two jobs sharing a
# node do not collide (ssa_pretrain/distributed.py computes the same default).
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:-127.0.0.1}" | head -n1)}
export MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export WANDB_MODE=${WANDB_MODE:-offline}              # `wandb sync RUN_DIR/wandb/...` afterwards
if [ "${SSA_DEVICE:-gpu}" = cpu ]; then
    export DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES=""  # gloo; no GPU is touched
else
    # NCCL defaults; every value can be overridden from the submitting environment.
    export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead rank aborts the job, no hang
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}             # INFO to debug topology / transport selection
    export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}     # InfiniBand: tolerate short fabric hiccups
    # Set per cluster when the defaults pick the wrong interface or HCA, e.g.:
    #   NCCL_SOCKET_IFNAME=ib0  NCCL_IB_HCA=mlx5  NCCL_NET_GDR_LEVEL=PHB  (see your cluster's docs)
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}  # Megatron: ordered TP comm/compute
fi

# ------------------------------------------------------------------ signals
GOT_SIGNAL=""
SRUN_PID=""
forward() {
    GOT_SIGNAL=$1
    say "got SIG$1: asking the training step to save and stop"
    # srun forwards USR1/TERM to every task on every node; the ranks agree on the step to stop at.
    [ -n "$SRUN_PID" ] && kill -s "$1" "$SRUN_PID" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# ------------------------------------------------------------------ train
say "nodes=${SLURM_JOB_NODELIST:-?} tasks=${SLURM_NTASKS:-1} master=$MASTER_ADDR:$MASTER_PORT" \
    "device=${SSA_DEVICE:-gpu} config=$CONFIG run_dir=$RUN_DIR overrides=${ARGS[*]:-none}"
TRAIN_LOG=$RUN_DIR/logs/train-$JOB$([ "$RESTART" = 0 ] || echo "-r$RESTART").log
# Each task reads its rank from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (ssa_pretrain/distributed.py).
# torchrun's variables would win there: ones left in the submitting shell (--export=ALL) must not make every
# task rank 0 of a world of one.
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE GROUP_RANK
srun --kill-on-bad-exit=1 --label --output="$TRAIN_LOG" \
    "$PYTHON" -m ssa_pretrain.train --run-dir "$RUN_DIR" "$CONFIG" logging.progress=false "${ARGS[@]}" &
SRUN_PID=$!
# `wait` returns early (status > 128) when a trapped signal arrives; wait again until srun has exited.
while :; do
    wait "$SRUN_PID"; rc=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break
done

state=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("state", "?"))' \
    "$RUN_DIR/status.json" 2>/dev/null || echo missing)
say "training step exited with $rc; status.json: $state"

if [ "$state" = stopped ] && [ "$GOT_SIGNAL" = USR1 ] && [ "${SSA_REQUEUE:-1}" = 1 ] \
    && [ -n "${SLURM_JOB_ID:-}" ]; then
    say "requeueing job ${SLURM_JOB_ID}; the rerun resumes from $RUN_DIR/checkpoints/latest"
    if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi
    say "scontrol requeue failed (job not requeueable?); resubmit by hand with the same command"
fi
exit "$rc"
