"""`ssa sweep plan | status | report`: ablation sweeps (see `ssa_pretrain/sweep/__init__.py`).

    ssa sweep plan configs/sweeps/ssa-ablation.yaml --out sweeps/ablation [key=value ...]
    ssa sweep run sweeps/ablation --max-parallel 3      # on this machine, without Slurm
    ssa sweep status sweeps/ablation
    ssa sweep report sweeps/ablation

Registered under `ssa sweep` by `ssa_pretrain.cli`.
`lookup PLAN.json K` prints element K's config and run directory (tab-separated) for slurm/pretrain.sh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ssa_pretrain.errors import exits_on_user_error
from ssa_pretrain.sweep.plan import lookup, plan
from ssa_pretrain.sweep.report import report
from ssa_pretrain.sweep.status import last_submit_command, resubmit_command, status

_STYLE = {"completed": "green", "running": "cyan", "stopped": "yellow", "pending": "dim",
          "failed": "bold red"}  # fmt: skip


def _format_params(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _cmd_plan(args: argparse.Namespace) -> int:
    runs = plan(args.grid, args.out, args.overrides)
    width = max(len(r.name) for r in runs)
    for run in runs:
        where = Path(args.out) / run.run_dir
        print(f"{run.index:>3}  {run.name:<{width}}  {where}  {_format_params(run.params)}")
    print(
        f"{len(runs)} runs planned in {args.out}/plan.json; submit with: "
        f"slurm/sweep.sh {args.grid} {args.out} --max-parallel N",
        file=sys.stderr,
    )
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    states = status(args.dir, use_slurm=not args.no_slurm)
    table = Table(title=f"sweep {args.dir}")
    for col in ("#", "run", "state", "step", "slurm", "note"):
        table.add_column(col)
    for st in states:
        steps = f"{st.step}/{st.steps}" if st.steps else str(st.step)
        style = _STYLE.get(st.state, "")
        table.add_row(str(st.run.index), st.run.name, f"[{style}]{st.state}[/]", steps, st.slurm, st.note)
    Console().print(table)
    failed = [str(st.run.index) for st in states if st.state == "failed"]
    command = last_submit_command(Path(args.dir))
    if failed and command:
        print(f"resubmit the failed elements alone (they resume their run directories):\n  "
              f"{resubmit_command(command, failed)}")  # fmt: skip
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ssa_pretrain.sweep.local import exit_code, run_local

    devices = args.devices.split(",") if args.devices else None
    results = run_local(args.dir, args.max_parallel, devices, args.only)
    failed = [r.run.name for r in results if r.returncode not in (None, 0)]
    if failed:
        print(f"not completed: {', '.join(failed)} (see their train.log; run again to resume them)",
              file=sys.stderr)  # fmt: skip
    return exit_code(results)


def _cmd_report(args: argparse.Namespace) -> int:
    result = report(args.dir, use_slurm=not args.no_slurm)
    print(Path(result["files"]["markdown"]).read_text())
    for name, path in result["files"].items():
        print(f"{name}: {path}")
    return 0


def _cmd_lookup(args: argparse.Namespace) -> int:
    config, run_dir = lookup(args.plan, args.index)
    print(f"{config}\t{run_dir}")
    return 0


def add_sweep_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `sweep plan|status|report` under an `ssa`-style subparser set; returns the `sweep` parser."""
    sweep = subparsers.add_parser(
        "sweep",
        help="ablation sweeps: plan a grid, follow its runs, report the table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = sweep.add_subparsers(dest="sweep_command", required=True)
    p = sub.add_parser(
        "plan",
        help="expand GRID.yaml into one resolved config per run (prints one line each)",
        usage="ssa sweep plan GRID [key=value ...] --out DIR",
    )
    p.add_argument("grid", help="sweep grid, e.g. configs/sweeps/ssa-ablation.yaml")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides for every run (before --out), e.g. train.steps=100"
    )
    p.add_argument("--out", required=True, help="sweep directory (plan.json, runs/<name>/)")
    p.set_defaults(func=exits_on_user_error(_cmd_plan))
    p = sub.add_parser("run", help="train the planned runs on this machine, a few at a time (no Slurm)",
                       description="Train each planned run as a local process (python -m "
                       "ssa_pretrain.train), at most --max-parallel at once; completed runs are skipped, "
                       "the others resume.")  # fmt: skip
    p.add_argument("dir", help="sweep directory written by `ssa sweep plan`")
    p.add_argument("--max-parallel", type=int, default=1, help="runs at once (default: %(default)s)")
    p.add_argument("--devices", help="comma-separated CUDA device ids, one per concurrent run (default: all "
                   "runs see every device)")  # fmt: skip
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these planned runs")
    p.set_defaults(func=exits_on_user_error(_cmd_run))
    for name, func, text in (
        ("status", _cmd_status, "state of every run (status.json + Slurm)"),
        ("report", _cmd_report, "write report.md, report.csv and plots/*.png"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("dir", help="sweep directory written by `ssa sweep plan`")
        p.add_argument("--no-slurm", action="store_true", help="do not ask Slurm for job states")
        p.set_defaults(func=exits_on_user_error(func))
    p = sub.add_parser("lookup", help="config and run directory of array element K (for slurm/pretrain.sh)")
    p.add_argument("plan", help="OUT/plan.json")
    p.add_argument("index", type=int, help="array index K")
    p.set_defaults(func=exits_on_user_error(_cmd_lookup))
    return sweep
