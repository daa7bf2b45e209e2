"""`ssa sweep plan | status | report` on synthetic run directories: fast, no Slurm, no training."""

from __future__ import annotations

import csv
import json
import os
import stat

import pytest
import yaml

from ssa_pretrain.cli import main as ssa_main
from ssa_pretrain.config import load_config
from ssa_pretrain.sweep import SweepError, load_plan, plan, report, status
from ssa_pretrain.sweep.plan import lookup
from ssa_pretrain.sweep.status import resubmit_command
from tests.helpers import REPO

TINY_GRID = REPO / "configs/sweeps/tiny-cpu.yaml"
ABLATION_GRID = REPO / "configs/sweeps/ssa-ablation.yaml"


def write_grid(tmp_path, grid: dict) -> str:
    path = tmp_path / "grid.yaml"
    path.write_text(
        yaml.safe_dump({"base": str(REPO / "configs/train/tiny-cpu.yaml"), **grid}, sort_keys=False)
    )
    return str(path)


def test_tiny_grid_expands_variants_and_a_named_axis(tmp_path):
    runs = plan(TINY_GRID, tmp_path / "sw", ["data.dir=/data/x"])
    assert [r.name for r in runs] == ["full", "ssa_align-both", "ssa_align-sf-only"]
    assert [r.index for r in runs] == [0, 1, 2]
    cfgs = [load_config(tmp_path / "sw" / r.config) for r in runs]
    assert [c.ssa.variant for c in cfgs] == ["full", "ssa", "ssa"]
    assert [(c.ssa.w_fs, c.ssa.w_sf) for c in cfgs[1:]] == [(1.0, 1.0), (0.0, 1.0)]
    assert all(c.data.dir == "/data/x" and c.train.steps == 8 and c.data.seq_len == 64 for c in cfgs)
    doc = json.loads((tmp_path / "sw/plan.json").read_text())
    assert doc["axes"] == ["ssa.variant", "align"]  # w_fs / w_sf are what the named axis `align` sets
    assert doc["runs"][2]["params"] == {"ssa.variant": "ssa", "align": "sf_only"}
    assert doc["overrides"] == ["data.dir=/data/x"]


def test_ablation_grid_is_the_paper_table_without_duplicates(tmp_path):
    runs = plan(ABLATION_GRID, tmp_path / "abl")
    names = [r.name for r in runs]
    assert len(runs) == 12 and len(set(names)) == 12
    assert {"full", "sparse", "ssa", "ssa_alpha-0", "ssa_block_count-32", "ssa_align-fs-only"} <= set(names)
    cfgs = {r.name: load_config(tmp_path / "abl" / r.config) for r in runs}
    assert len({r.config_sha256 for r in runs}) == 12
    assert all(c.model.num_layers == 24 and c.data.seq_len == 8192 for c in cfgs.values())
    assert cfgs["ssa_full_ratio-0.25"].ssa.full_ratio == 0.25
    assert (cfgs["ssa_align-sf-only"].ssa.w_fs, cfgs["ssa_align-sf-only"].ssa.w_sf) == (0.0, 1.0)
    # The baseline recurs in every one-axis block; it is planned once and carries the labels it stands for.
    ssa = next(r for r in runs if r.name == "ssa")
    assert ssa.params["align"] == "both" and ssa.params["ssa.alpha"] == 10.0


def test_cartesian_axes_are_crossed_with_variants(tmp_path):
    grid = write_grid(
        tmp_path,
        {
            "variants": [{"name": "a", "set": {"train.lr": 1e-3}}, {"name": "b"}],
            "axes": {"ssa.full_ratio": [0.25, 0.75], "ssa.block_count": [2, 4]},
        },
    )
    runs = plan(grid, tmp_path / "sw")
    assert [r.name for r in runs] == [
        "a_full_ratio-0.25_block_count-2", "a_full_ratio-0.25_block_count-4",
        "a_full_ratio-0.75_block_count-2", "a_full_ratio-0.75_block_count-4",
        "b_full_ratio-0.25_block_count-2", "b_full_ratio-0.25_block_count-4",
        "b_full_ratio-0.75_block_count-2", "b_full_ratio-0.75_block_count-4",
    ]  # fmt: skip
    assert runs[5].params == {"ssa.block_count": 4, "ssa.full_ratio": 0.25, "train.lr": 3.0e-3}


def test_replanning_the_same_grid_is_allowed_a_different_one_is_refused(tmp_path):
    plan(TINY_GRID, tmp_path / "sw")
    (tmp_path / "sw/runs/full/status.json").write_text('{"state": "running", "step": 3, "steps": 8}')
    assert len(plan(TINY_GRID, tmp_path / "sw")) == 3
    with pytest.raises(SweepError, match="already holds a different sweep plan"):
        plan(TINY_GRID, tmp_path / "sw", ["train.steps=9"])
    assert load_config(tmp_path / "sw/runs/full/config.yaml").train.steps == 8  # nothing was overwritten


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"axes": {"ssa.full_ratio": [0.5, 2.0]}}, r"full_ratio-2: invalid config\n  ssa.full_ratio"),
        ({"axes": {"ssa.ful_ratio": [0.5]}}, "ssa.ful_ratio: unknown key .did you mean 'full_ratio'"),
        ({"axis": {}}, "unknown keys \\['axis'\\]"),
        ({"axes": {"ssa.alpha": []}}, "must be a non-empty list"),
        ({"variants": [{"set": {}}]}, "variants\\[0\\] needs a 'name'"),
        (
            {
                "variants": [
                    {"name": "x", "set": {"train.steps": 1}},
                    {"name": "x", "set": {"train.steps": 2}},
                ]
            },
            "both named 'x'",
        ),
    ],
    ids=["bad-value", "unknown-key", "unknown-grid-key", "empty-axis", "nameless-variant", "name-clash"],
)
def test_bad_grids_fail_before_anything_is_written(tmp_path, grid, message):
    with pytest.raises(SweepError, match=message):
        plan(write_grid(tmp_path, grid), tmp_path / "sw")
    assert not (tmp_path / "sw").exists()


def test_lookup_gives_absolute_paths_of_an_array_element(tmp_path):
    plan(TINY_GRID, tmp_path / "sw")
    config, run_dir = lookup(tmp_path / "sw/plan.json", 1)
    assert config == (tmp_path / "sw/runs/ssa_align-both/config.yaml").resolve() and config.is_file()
    assert run_dir == (tmp_path / "sw/runs/ssa_align-both").resolve()
    with pytest.raises(SweepError, match="outside the plan"):
        lookup(tmp_path / "sw/plan.json", 3)


def fake_run(run_dir, state: str | None, steps: int = 8, upto: int = 8, val_every: int = 4, base=5.0):
    """A run directory as the trainer leaves it: status.json + metrics.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if state is None:
        return
    (run_dir / "status.json").write_text(json.dumps({"state": state, "step": upto, "steps": steps}))
    with (run_dir / "metrics.jsonl").open("w") as f:
        for step in range(1, upto + 1):
            row = {"step": step, "loss": base - 0.1 * step, "tokens_per_s": 1000.0 + step}
            if step % val_every == 0 or step == steps:
                row.update(val_loss_full=base - 0.05 * step, val_loss_sparse=base - 0.04 * step)
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 99, "loss": ')  # a torn last line is skipped


def test_status_reads_each_runs_status_json(tmp_path):
    sw = tmp_path / "sw"
    runs = plan(TINY_GRID, sw)
    fake_run(sw / runs[0].run_dir, "completed")
    fake_run(sw / runs[1].run_dir, "running", upto=3)
    states = status(sw, use_slurm=False)
    assert [(s.state, s.step, s.steps) for s in states] == [
        ("completed", 8, 8),
        ("running", 3, 8),
        ("pending", 0, None),
    ]


def install_fake_squeue(tmp_path, monkeypatch, lines: str) -> None:
    """A `squeue` on PATH that prints the given `%F|%K|%T` lines."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "squeue"
    script.write_text(f"#!/bin/sh\ncat <<'X'\n{lines}\nX\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_status_combines_slurm_job_states(tmp_path, monkeypatch):
    sw = tmp_path / "sw"
    runs = plan(TINY_GRID, sw)
    (sw / "jobs.txt").write_text("41\tsbatch --array=0-2%2 pretrain.sh\n42\tsbatch --array=2 pretrain.sh\n")
    fake_run(sw / runs[0].run_dir, "running", upto=3)  # its element is gone from the queue: it died
    fake_run(sw / runs[1].run_dir, "stopped", upto=4)  # requeued after a signal: pending again
    fake_run(sw / runs[2].run_dir, None)  # resubmitted (job 42), starting
    install_fake_squeue(tmp_path, monkeypatch, "41|1|PENDING\n41|2|FAILED\n42|2|RUNNING")
    states = status(sw)
    assert [(s.state, s.slurm) for s in states] == [
        ("failed", ""),
        ("stopped", "PENDING"),
        ("running", "RUNNING"),
    ]
    assert "without a final status" in states[0].note


def test_status_marks_elements_that_never_started_as_failed_once_their_job_is_gone(tmp_path, monkeypatch):
    sw = tmp_path / "sw"
    plan(TINY_GRID, sw)
    (sw / "jobs.txt").write_text("41\tsbatch --array=0-2%2 pretrain.sh\n")
    install_fake_squeue(tmp_path, monkeypatch, "41|[1-2%2]|PENDING")
    assert [s.state for s in status(sw)] == ["failed", "pending", "pending"]


def test_resubmit_command_restricts_the_array():
    cmd = "sbatch --array=0-11%4 --job-name=sweep-x /repo/slurm/pretrain.sh --plan /s/plan.json"
    assert resubmit_command(cmd, ["3", "7"]) == (
        "sbatch --array=3,7 --job-name=sweep-x /repo/slurm/pretrain.sh --plan /s/plan.json"
    )


def test_report_writes_table_csv_and_plots(tmp_path):
    sw = tmp_path / "sw"
    runs = plan(TINY_GRID, sw)
    fake_run(sw / runs[0].run_dir, "completed", base=5.0)
    fake_run(sw / runs[1].run_dir, "failed", upto=5, base=6.0)
    fake_run(sw / runs[2].run_dir, "running", upto=2, base=7.0)
    result = report(sw, use_slurm=False)

    md = (sw / "report.md").read_text()
    assert "1 completed, 1 running, 1 failed (of 3 runs)" in md
    row = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "| completed | full | – | 8/8 | 4.6 | 4.68 | 4.2 | 1,005 |" in row["full"]
    assert "**FAILED**" in row["ssa_align-both"] and "| 5/8 | 5.8 | 5.84 | 5.5 |" in row["ssa_align-both"]
    assert "**running**" in row["ssa_align-sf-only"] and "| – | – |" in row["ssa_align-sf-only"]

    table = list(csv.DictReader((sw / "report.csv").open()))
    assert [r["state"] for r in table] == ["completed", "failed", "running"]
    assert float(table[0]["val_loss_sparse"]) == pytest.approx(5.0 - 0.04 * 8)
    assert float(table[0]["tokens_per_s"]) == pytest.approx(1005.0)  # median of steps 2..8
    assert table[1]["align"] == "both"

    for key in ("loss_curves", "vs_ssa.variant", "vs_align"):
        data = result["files"][key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, key


def test_cli_plan_prints_one_line_per_run_and_bad_input_exits_2(tmp_path, capsys):
    assert ssa_main(["sweep", "plan", str(TINY_GRID), "train.steps=5", "--out", str(tmp_path / "sw")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].split()[:2] == ["0", "full"]
    assert all(r.config_sha256 for r in load_plan(tmp_path / "sw"))
    assert ssa_main(["sweep", "status", str(tmp_path / "nowhere")]) == 2
    assert "plan.json not found" in capsys.readouterr().err
