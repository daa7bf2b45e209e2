"""slurm/pretrain.sh and slurm/sweep.sh on a real single-node Slurm, 2 CPU tasks on gloo.

  * a 2-task run trains, checkpoints and exits 0;
  * a run that gets USR1 mid-run saves, requeues itself and finishes from the saved step with exactly the
    losses of the uninterrupted run;
  * a 3-run sweep goes through one job array and `ssa sweep report` tabulates and plots it; a failed
    element is resubmitted alone with the command `ssa sweep status` prints.

About 3 minutes on 2 cores (start-up of Megatron + DeepSpeed is most of each job).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, read_metrics
from tests.slurm.conftest import slurm_unavailable

_why = slurm_unavailable()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(_why is not None, reason=f"Slurm tests skipped: {_why}")]

# Enough steps (~0.06 s each on 2 CPUs) that the preemption signal, sent after step 3, lands mid-run even on
# a loaded machine: with 40 the run could finish before `scancel` delivered it.
STEPS = 300
FAST = [
    "data.seq_len=64",
    "ssa.block_size=8",
    "ssa.block_count=2",
    f"train.steps={STEPS}",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "train.log_interval=1",
    f"train.eval_interval={STEPS // 2}",
    "train.eval_batches=2",
    f"train.save_interval={STEPS * 10}",  # checkpoints only where a signal asks and at the end
    "logging.wandb=disabled",
]
# 2 tasks (gloo) on the CI node's 2 CPUs; GPUs off.
CPU_JOB = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]


def sbatch(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sbatch", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def job_fields(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=30)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def logs(run_dir: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text()[-4000:]}" for p in sorted((run_dir / "logs").glob("*")))


@pytest.fixture(scope="module")
def straight_run(slurm_data, job_env, tmp_path_factory) -> Path:
    """`sbatch --wait slurm/pretrain.sh` of the tiny config, 2 tasks, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    proc = sbatch(
        ["--wait", *CPU_JOB, f"--output={run_dir.parent}/job.out", "slurm/pretrain.sh",
         "configs/train/tiny-cpu.yaml", "--run-dir", str(run_dir), f"data.dir={slurm_data}", *FAST],
        job_env,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs(run_dir)}"
    return run_dir


def test_pretrain_trains_two_tasks_and_checkpoints(straight_run):
    from ssa_pretrain.checkpoint import read_meta

    assert json.loads((straight_run / "status.json").read_text())["state"] == "completed"
    assert [m["step"] for m in read_metrics(straight_run)] == list(range(1, STEPS + 1))
    assert "val_loss_sparse" in read_metrics(straight_run)[-1]
    latest = straight_run / "checkpoints" / (straight_run / "checkpoints/latest").read_text().strip()
    assert latest.name == f"step-{STEPS:06d}"
    assert read_meta(latest)["world_size"] == 2  # really two ranks, started by srun
    launcher = (straight_run / "logs/launcher.log").read_text()
    assert "tasks=2" in launcher and "exited with 0; status.json: completed" in launcher


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1, detail=lambda: ""):
    """Poll `predicate` until it is truthy; on timeout fail with `detail()` (the job's state and logs)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail()}")


def test_preempted_job_saves_requeues_and_resumes_with_the_same_losses(
    straight_run, slurm_data, job_env, tmp_path
):
    run_dir = tmp_path / "run"
    proc = sbatch(
        ["--parsable", *CPU_JOB, f"--output={tmp_path}/job.out", "slurm/pretrain.sh",
         "configs/train/tiny-cpu.yaml", "--run-dir", str(run_dir), f"data.dir={slurm_data}", *FAST],
        job_env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]

    def state() -> str:
        return f"scontrol: {job_fields(job)}\n{logs(run_dir)}"

    try:
        metrics = run_dir / "metrics.jsonl"
        wait_for(
            lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3,
            240,
            "3 logged steps",
            detail=state,
        )
        # What Slurm does at --signal=B:USR1@120 before the time limit, delivered now.
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, timeout=30)
        wait_for(
            lambda: (f := job_fields(job)).get("Restarts") == "1" and f.get("JobState") == "PENDING",
            120, "the requeue", detail=state,
        )  # fmt: skip
        # A requeued job waits for its begin time (~40 s on this Slurm); start it sooner. Not within the
        # second of the requeue: slurmd rejects credentials issued in the second it revoked the old ones
        # ("Job credential revoked"), which fails the job.
        time.sleep(2)
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], timeout=30, check=False)
        done = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}
        final = wait_for(
            lambda: (f := job_fields(job)).get("JobState") in done and f,
            300,
            "the rerun to finish",
            poll=0.5,
            detail=state,
        )
    finally:
        subprocess.run(["scancel", job], timeout=30, check=False)
    assert final["JobState"] == "COMPLETED" and final["ExitCode"] == "0:0", f"{final}\n{logs(run_dir)}"

    launcher = (run_dir / "logs/launcher.log").read_text()
    assert "got SIGUSR1" in launcher and "status.json: stopped" in launcher and "requeueing job" in launcher
    assert "restart 1]" in launcher, launcher
    saved = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert len(saved) == 2 and saved[-1] == f"step-{STEPS:06d}", saved  # the signal's save + the final one
    stopped_at = int(saved[0].split("-")[1])
    assert 3 <= stopped_at < STEPS
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    resumed = read_metrics(run_dir)
    assert [m["step"] for m in resumed] == list(range(1, STEPS + 1))
    assert [m["loss"] for m in resumed] == [m["loss"] for m in read_metrics(straight_run)]
    assert resumed[-1]["val_loss_full"] == read_metrics(straight_run)[-1]["val_loss_full"]


def sweep_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssa_pretrain.cli", "sweep", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_sweep_runs_as_one_job_array_and_reports(slurm_data, job_env, tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run(
        ["slurm/sweep.sh", "configs/sweeps/tiny-cpu.yaml", str(out), f"data.dir={slurm_data}",
         "--max-parallel", "2", "--", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1",
         "--time=15", "--wait"],
        cwd=REPO, env=job_env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    runs = json.loads((out / "plan.json").read_text())["runs"]
    detail = "\n".join(logs(out / r["run_dir"]) for r in runs)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{detail}"
    assert len([line for line in proc.stdout.splitlines() if "/runs/" in line]) == 3  # `plan`: a line per run
    job = (out / "jobs.txt").read_text().split("\t")[0]
    assert sorted(p.name for p in (out / "logs").glob("*.out")) == [f"{job}_{i}.out" for i in range(3)]

    report = sweep_cli("report", str(out), env=job_env)
    assert report.returncode == 0, report.stderr
    md = (out / "report.md").read_text()
    assert "3 completed (of 3 runs)" in md
    table = list(csv.DictReader((out / "report.csv").open()))
    assert [r["run"] for r in table] == ["full", "ssa_align-both", "ssa_align-sf-only"]
    for row in table:
        assert row["state"] == "completed" and row["step"] == "8"
        assert 0 < float(row["val_loss_full"]) < 10 and 0 < float(row["val_loss_sparse"]) < 10
        assert float(row["tokens_per_s"]) > 0
    for name in ("loss_curves.png", "val_loss_vs_align.png", "val_loss_vs_ssa_variant.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG", name

    # A lost element (here: its run directory wiped) is resubmitted alone with the printed command.
    lost = out / runs[1]["run_dir"]
    for path in sorted(lost.rglob("*"), reverse=True):
        if path.name != "config.yaml":
            path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    (lost / "status.json").write_text('{"state": "running", "step": 3, "steps": 8}')
    status = sweep_cli("status", str(out), env=job_env)
    assert status.returncode == 0 and "failed" in status.stdout, status.stdout
    command = status.stdout.split("resubmit the failed elements alone")[1].splitlines()[1].strip()
    assert "--array=1 " in command, command
    resubmit = subprocess.run(
        command, shell=True, cwd=REPO, env=job_env, capture_output=True, text=True, timeout=300
    )
    assert resubmit.returncode == 0, f"{resubmit.stderr}\n{logs(lost)}"  # the recorded command kept --wait
    assert json.loads((lost / "status.json").read_text())["state"] == "completed"
    assert [m["step"] for m in read_metrics(lost)] == list(range(1, 9))
