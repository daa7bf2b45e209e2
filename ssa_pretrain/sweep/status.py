"""Where each run of a sweep stands: its `status.json`, and the Slurm job state when Slurm is there.

States: `pending` (nothing ran yet), `running`, `completed`, `stopped` (saved on a signal; a requeued
element resumes it), `failed` (the trainer said so, or its Slurm element ended without a final status).
`slurm/sweep.sh` appends each array job id it submits to `OUT/jobs.txt`; without that file (or without
`squeue`) the state comes from `status.json` alone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ssa_pretrain.sweep.plan import PlannedRun, load_plan

JOBS_FILE = "jobs.txt"
_ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}  # fmt: skip


@dataclass
class RunStatus:
    """One run's state for `ssa sweep status` / `report`."""

    run: PlannedRun
    state: str
    """pending / running / completed / stopped / failed."""
    step: int
    """Last step recorded in status.json (0 when it has not started)."""
    steps: int | None
    """Planned steps (None when unknown)."""
    slurm: str = ""
    """Slurm state of the run's array element (`RUNNING`, `PENDING`, ...), empty when unknown."""
    note: str = ""
    """Why a run is marked failed, or the signal it stopped on."""


def _array_ranges(spec: str) -> list[int]:
    """Array indices of a squeue `%K` field: `3`, `[2-5%2]`, `[0,4-6]`."""
    spec = spec.strip("[]").split("%")[0]
    out: list[int] = []
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out += list(range(int(lo), int(hi or lo) + 1))
    return out


def slurm_states(job_ids: list[str]) -> dict[int, str] | None:
    """Array index -> state of the queued / running elements of the given array jobs (latest job wins).

    None when Slurm cannot be asked (no `squeue`, or it failed); then no state is inferred from Slurm.
    """
    if not job_ids or shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%F|%K|%T", "--jobs", ",".join(job_ids)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    order = {job: i for i, job in enumerate(job_ids)}
    found: dict[int, tuple[int, str]] = {}
    for line in out.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 3:
            continue
        job, spec, state = fields
        rank = order.get(job, -1)
        for index in _array_ranges(spec):
            if index not in found or found[index][0] <= rank:
                found[index] = (rank, state)
    return {index: state for index, (_, state) in found.items()}


def read_job_ids(out_dir: Path) -> list[str]:
    """The array job ids `slurm/sweep.sh` recorded, oldest first."""
    path = out_dir / JOBS_FILE
    if not path.is_file():
        return []
    return [m.group(0) for m in re.finditer(r"^\d+", path.read_text(), flags=re.M)]


def _read_status(run_dir: Path) -> dict | None:
    try:
        data = json.loads((run_dir / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def status(out_dir: str | Path, use_slurm: bool = True) -> list[RunStatus]:
    """The state of every planned run of a sweep directory."""
    out_dir = Path(out_dir)
    runs = load_plan(out_dir)
    job_ids = read_job_ids(out_dir)
    queue = slurm_states(job_ids) if use_slurm else None
    result = []
    for run in runs:
        info = _read_status(out_dir / run.run_dir)
        slurm = (queue or {}).get(run.index, "")
        alive = slurm in _ALIVE
        state = info.get("state", "failed") if info else "pending"
        step = int(info.get("step", 0)) if info else 0
        steps = info.get("steps") if info else None
        note = str(info.get("reason") or info.get("signal") or "") if info else ""
        if queue is not None and not alive:
            # Slurm knows the sweep and this element is no longer queued or running.
            if state == "running":
                state, note = "failed", "job ended without a final status (killed? see RUN_DIR/logs)"
            elif state == "pending" and job_ids:
                state, note = "failed", "job ended before training started (see RUN_DIR/logs)"
        elif alive and state in ("pending", "stopped"):
            state = "running" if slurm == "RUNNING" else state
        result.append(RunStatus(run, state, step, steps, slurm, note))
    return result


def last_submit_command(out_dir: Path) -> str | None:
    """The `sbatch` command line of the latest submission recorded in `OUT/jobs.txt` (JOBID<TAB>COMMAND)."""
    path = out_dir / JOBS_FILE
    if not path.is_file():
        return None
    lines = [line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line]
    return lines[-1][1] if lines else None


def resubmit_command(command: str, indices: list[str]) -> str:
    """The same submission restricted to some array elements: `--array=...` replaced by `--array=K,L`."""
    if re.search(r"--array[= ]\S+", command):
        return re.sub(r"--array[= ]\S+", f"--array={','.join(indices)}", command, count=1)
    return command.replace("sbatch ", f"sbatch --array={','.join(indices)} ", 1)
