"""A sweep's results: one table row per run (markdown + CSV) and PNG plots.

    OUT/report.md                 the table, failed / running runs marked
    OUT/report.csv                the same numbers, one row per run
    OUT/plots/loss_curves.png     training loss (and validation loss) per run vs step
    OUT/plots/<metric>_vs_<axis>.png   final val loss (full and sparse mode) vs each swept axis

Final values come from the last line of each run's `metrics.jsonl` that holds them: train loss from the
last logged step, validation losses from the last evaluation; tokens/s is the median over logged steps
after the first (the first includes compilation and warm-up).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from ssa_pretrain.sweep.plan import read_plan_doc
from ssa_pretrain.sweep.status import RunStatus, status

METRICS = ("val_loss_full", "val_loss_sparse", "train_loss", "tokens_per_s")
_MARK = {"failed": "FAILED", "running": "running", "pending": "pending", "stopped": "stopped"}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The JSON lines of a run's metrics file (a torn last line, from a run killed mid-write, is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Final metrics of one run (None where the run has not produced them)."""
    out: dict[str, float | None] = dict.fromkeys(METRICS)
    if rows:
        out["train_loss"] = rows[-1].get("loss")
    for key in ("val_loss_full", "val_loss_sparse"):
        out[key] = next((r[key] for r in reversed(rows) if r.get(key) is not None), None)
    speeds = [r["tokens_per_s"] for r in rows[1:] or rows if r.get("tokens_per_s")]
    out["tokens_per_s"] = statistics.median(speeds) if speeds else None
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _table_rows(out_dir: Path, states: list[RunStatus], axes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for st in states:
        summary = summarize(read_metrics(out_dir / st.run.run_dir))
        rows.append(
            {
                "run": st.run.name,
                "state": st.state,
                **{axis: st.run.params.get(axis) for axis in axes},
                "step": st.step,
                "steps": st.steps,
                **summary,
                "slurm": st.slurm,
                "note": st.note,
            }
        )
    return rows


def _write_markdown(path: Path, rows: list[dict[str, Any]], axes: list[str], title: str) -> None:
    cols = ["run", "state", *axes, "step", *METRICS, "note"]
    names = {"val_loss_full": "val loss (full)", "val_loss_sparse": "val loss (sparse)",
             "train_loss": "train loss", "tokens_per_s": "tokens/s"}  # fmt: skip
    lines = [f"# Sweep report: {title}", ""]
    states = ("completed", "running", "stopped", "pending", "failed")
    counts = {s: sum(r["state"] == s for r in rows) for s in states}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" (of {len(rows)} runs)")
    lines += ["", "| " + " | ".join(names.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for col in cols:
            if col == "state":
                cells.append(f"**{_MARK[row['state']]}**" if row["state"] in _MARK else row["state"])
            elif col == "step":
                cells.append(f"{row['step']}/{_fmt(row['steps'])}")
            else:
                cells.append(_fmt(row[col]).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Final values: train loss of the last logged step, validation losses of the last evaluation,",
        "tokens/s the median over logged steps. Runs not completed show their values so far.",
        "",
    ]
    path.write_text("\n".join(lines))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_loss_curves(path: Path, runs: dict[str, Path]) -> None:
    """Training loss (left) and validation loss in full / sparse mode (right) of runs `{label: run_dir}`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(13, 5))
    for label, run_dir in runs.items():
        rows = read_metrics(run_dir)
        if not rows:
            continue
        (line,) = ax_train.plot([r["step"] for r in rows], [r.get("loss") for r in rows], label=label, lw=1)
        for key, style in (("val_loss_full", "-o"), ("val_loss_sparse", "--s")):
            val = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if val:
                ax_val.plot(*zip(*val, strict=True), style, color=line.get_color(), ms=3, lw=1)
    ax_train.set(title="training loss", xlabel="step", ylabel="loss")
    ax_val.set(title="validation loss (solid: full, dashed: sparse)", xlabel="step", ylabel="loss")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
    ax_train.legend(fontsize="small", loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) and not isinstance(value, bool) else (1, str(value))


def _plot_axis(path: Path, rows: list[dict[str, Any]], axis: str, axes: list[str]) -> bool:
    """Final val losses vs one axis; one line per setting of the other axes. False when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [a for a in axes if a != axis]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["val_loss_full"] is None and row["val_loss_sparse"] is None:
            continue
        groups.setdefault(tuple(row[a] for a in others), []).append(row)
    if not groups:
        return False
    xs = sorted({row[axis] for g in groups.values() for row in g}, key=_sort_key)
    pos = {x: i for i, x in enumerate(xs)}
    fig, axs = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, metric in zip(axs, ("val_loss_full", "val_loss_sparse"), strict=True):
        for key, group in groups.items():
            pts = sorted((pos[r[axis]], r[metric]) for r in group if r[metric] is not None)
            if not pts:
                continue
            label = ", ".join(f"{a.rsplit('.', 1)[-1]}={_fmt(v)}" for a, v in zip(others, key, strict=True))
            ax.plot(*zip(*pts, strict=True), "-o", ms=4, label=label or None)
        ax.set_xticks(range(len(xs)), [_fmt(x) for x in xs])
        ax.set(title=f"final {metric.replace('_', ' ')}", xlabel=axis)
        ax.grid(alpha=0.3)
    axs[0].set_ylabel("loss")
    if others and len(groups) <= 12:
        axs[1].legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(out_dir: str | Path, use_slurm: bool = True) -> dict[str, Any]:
    """Write report.md, report.csv and plots/*.png for a sweep directory; returns the rows and file paths."""
    out_dir = Path(out_dir)
    doc = read_plan_doc(out_dir)
    axes = list(doc.get("axes", []))
    states = status(out_dir, use_slurm=use_slurm)
    rows = _table_rows(out_dir, states, axes)
    files = {"markdown": out_dir / "report.md", "csv": out_dir / "report.csv"}
    _write_markdown(files["markdown"], rows, axes, Path(doc.get("grid", str(out_dir))).name)
    _write_csv(files["csv"], rows)
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    files["loss_curves"] = plots / "loss_curves.png"
    curves = {
        st.run.name if st.state == "completed" else f"{st.run.name} ({st.state})": out_dir / st.run.run_dir
        for st in states
    }
    plot_loss_curves(files["loss_curves"], curves)
    for axis in axes:
        if len({_fmt(r[axis]) for r in rows}) < 2:
            continue  # not actually varied
        path = plots / f"val_loss_vs_{axis.replace('.', '_')}.png"
        if _plot_axis(path, rows, axis, axes):
            files[f"vs_{axis}"] = path
    return {"rows": rows, "files": files}
