"""Run a planned sweep on this machine, without Slurm: one training process per run, a few at a time.

    ssa sweep plan configs/sweeps/replication-40m.yaml --out sweeps/repl
    ssa sweep run sweeps/repl --max-parallel 3                 # three runs share the one GPU
    ssa sweep run sweeps/repl --max-parallel 4 --devices 0,1,2,3   # one GPU per run

Each run is `python -m ssa_pretrain.train RUN/config.yaml --run-dir RUN` (a world of one), its output
appended to `RUN/train.log`. Completed runs are skipped, others resume from their own checkpoints, so
running the command again finishes an interrupted sweep. SIGINT / SIGTERM are passed on to the runs (they
save at the next step and exit `stopped`) and no new run starts. `ssa sweep status` / `report` read the
same run directories as for a Slurm sweep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ssa_pretrain.sweep.plan import PlannedRun, SweepError
from ssa_pretrain.sweep.status import status

LOG_FILE = "train.log"


@dataclass
class LocalRun:
    """One finished (or skipped) run of `run_local`."""

    run: PlannedRun
    returncode: int | None
    """Exit status of its training process; None when it was skipped (completed before)."""
    seconds: float = 0.0


def run_local(
    out_dir: str | Path,
    max_parallel: int = 1,
    devices: list[str] | None = None,
    only: list[str] | None = None,
    log: Callable[[str], None] = print,
    poll_seconds: float = 0.5,
) -> list[LocalRun]:
    """Train the runs of the sweep in `out_dir`, at most `max_parallel` at once; return one entry per run.

    `devices` (CUDA device ids) gives each concurrent slot its own `CUDA_VISIBLE_DEVICES`; without it all
    runs see every device. `only` restricts the sweep to the named runs.
    """
    out_dir = Path(out_dir)
    if max_parallel < 1:
        raise SweepError(f"--max-parallel must be at least 1, got {max_parallel}")
    if devices is not None and len(devices) < max_parallel:
        raise SweepError(f"--devices lists {len(devices)} devices for --max-parallel {max_parallel}")
    states = {st.run.name: st for st in status(out_dir, use_slurm=False)}
    unknown = sorted(set(only or ()) - set(states))
    if unknown:
        raise SweepError(
            f"{out_dir}: no planned run named {', '.join(unknown)}; planned: {', '.join(states)}"
        )
    queue = [st.run for st in states.values() if not only or st.run.name in only]
    results = [LocalRun(r, None) for r in queue if states[r.name].state == "completed"]
    for done in results:
        log(f"[{done.run.index}] {done.run.name}: completed before, skipped")
    queue = [r for r in queue if states[r.name].state != "completed"]
    free = list(devices or [None] * max_parallel)[:max_parallel]
    running: dict[int, tuple[subprocess.Popen, PlannedRun, str | None, float]] = {}
    interrupted: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        interrupted.append(signum)
        for proc, *_ in running.values():
            proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while queue or running:
            while queue and free and not interrupted:
                run, device = queue.pop(0), free.pop(0)
                running[run.index] = (_start(out_dir, run, device), run, device, time.monotonic())
                log(f"[{run.index}] {run.name}: started" + (f" on device {device}" if device else ""))
            for index, (proc, run, device, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[index]
                free.append(device)
                results.append(LocalRun(run, proc.returncode, time.monotonic() - start))
                state = "completed" if proc.returncode == 0 else f"exit {proc.returncode}"
                log(f"[{run.index}] {run.name}: {state} after {results[-1].seconds:.0f} s "
                    f"(log: {out_dir / run.run_dir / LOG_FILE})")  # fmt: skip
            if interrupted and not running:
                break
            time.sleep(poll_seconds)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return sorted(results, key=lambda r: r.run.index)


def _start(out_dir: Path, run: PlannedRun, device: str | None) -> subprocess.Popen:
    run_dir = out_dir / run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):  # a world of one each
        env.pop(key, None)
    cmd = [sys.executable, "-m", "ssa_pretrain.train", str(out_dir / run.config), "--run-dir", str(run_dir)]
    with (run_dir / LOG_FILE).open("ab") as logf:
        logf.write(f"$ {' '.join(cmd)}\n".encode())
        logf.flush()
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)


def exit_code(results: list[LocalRun]) -> int:
    """0 when every run completed (now or before), else 1."""
    return 0 if all(r.returncode in (None, 0) for r in results) and results else 1
