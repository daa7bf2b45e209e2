"""`ssa sweep run`: the planned runs train as local processes, a few at a time, then resume or skip."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ssa_pretrain.sweep import plan, status
from tests.helpers import REPO

TINY_GRID = REPO / "configs/sweeps/tiny-cpu.yaml"
FAST = ["train.steps=3", "train.eval_interval=3", "train.save_interval=3", "train.eval_batches=1"]


def ssa(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssa_pretrain.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.slow
def test_local_runner_trains_every_run_then_skips_them(tiny_data, tmp_path):
    out = tmp_path / "sweep"
    plan(TINY_GRID, out, [f"data.dir={tiny_data}", *FAST])
    proc = ssa("sweep", "run", out, "--max-parallel", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [st.state for st in status(out, use_slurm=False)] == ["completed"] * 3
    for name in ("full", "ssa_align-both", "ssa_align-sf-only"):
        assert (out / "runs" / name / "train.log").read_text().startswith("$ ")
        assert json.loads((out / "runs" / name / "status.json").read_text())["step"] == 3
    again = ssa("sweep", "run", out, "--only", "full")
    assert again.returncode == 0 and "completed before, skipped" in again.stdout, again.stdout


def test_local_runner_refuses_unknown_runs_and_bad_parallelism(tmp_path):
    out = tmp_path / "sweep"
    plan(TINY_GRID, out)
    proc = ssa("sweep", "run", out, "--only", "nope")
    assert proc.returncode == 2 and "no planned run named nope" in proc.stderr, proc.stderr
    proc = ssa("sweep", "run", out, "--max-parallel", "2", "--devices", "0")
    assert proc.returncode == 2 and "--devices lists 1 devices" in proc.stderr, proc.stderr


def test_a_failing_run_is_reported_and_exits_1(tmp_path):
    out = tmp_path / "sweep"
    plan(TINY_GRID, out, ["data.dir=/nonexistent/data", *FAST])
    proc = ssa("sweep", "run", out, "--only", "full")
    assert proc.returncode == 1 and "not completed: full" in proc.stderr, proc.stdout + proc.stderr
    assert "exit 2" in proc.stdout and "/nonexistent/data" in (out / "runs/full/train.log").read_text()
