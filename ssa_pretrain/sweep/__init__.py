"""Ablation sweeps: expand a grid into resolved run configs, follow the runs, report their results.

    ssa sweep plan configs/sweeps/ssa-ablation.yaml --out sweeps/ablation   # one line per planned run
    slurm/sweep.sh configs/sweeps/ssa-ablation.yaml sweeps/ablation --max-parallel 4   # plan + job array
    ssa sweep run sweeps/ablation --max-parallel 3       # or: on this machine, no Slurm (sweep/local.py)
    ssa sweep status sweeps/ablation
    ssa sweep report sweeps/ablation        # report.md, report.csv, plots/*.png

`plan` (grid → `OUT/plan.json` + `OUT/runs/<name>/config.yaml`), `status` (per run state from its
`status.json` and Slurm) and `report` (table + plots from the runs' `metrics.jsonl`) are the three steps.
"""

from ssa_pretrain.sweep.plan import PlannedRun, SweepError, load_plan, plan
from ssa_pretrain.sweep.report import report
from ssa_pretrain.sweep.status import RunStatus, status

__all__ = ["PlannedRun", "RunStatus", "SweepError", "load_plan", "plan", "report", "status"]
