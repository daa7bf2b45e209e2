"""Do the efficiency levers change what is learned? The table of `tools/gpu_numerics.sh`'s runs.

Reads `ROOT/seed-*/RUN/metrics.jsonl` (each seed's `reference` is the run with every lever off) and prints,
per seed and run, the mean training cross-entropy difference to that seed's reference over the logged
steps after `--from-step` (the same batches at the same steps: the data order is the seed's), its mean
absolute value, and the final validation loss in both modes with its difference.

    python tools/numerics_report.py docs/perf/numerics
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ssa_pretrain.sweep.report import read_metrics


def rows(root: Path, from_step: int) -> list[dict]:
    """One row per (seed, run); the reference of each seed first."""
    out = []
    for seed_dir in sorted(root.glob("seed-*"), key=lambda p: int(p.name.split("-")[1])):
        reference = {r["step"]: r for r in read_metrics(seed_dir / "reference")}
        runs = sorted(seed_dir.iterdir(), key=lambda p: (p.name != "reference", p.name))
        for run in runs:
            logged = read_metrics(run)
            diffs = [r["ce"] - reference[r["step"]]["ce"] for r in logged if r["step"] > from_step]
            last, ref_last = logged[-1], reference[max(reference)]
            out.append(
                {
                    "seed": seed_dir.name.split("-")[1],
                    "run": run.name,
                    "mean_diff": statistics.mean(diffs),
                    "mean_abs_diff": statistics.mean(abs(d) for d in diffs),
                    "val_full": last["val_loss_full"],
                    "val_sparse": last["val_loss_sparse"],
                    "val_full_diff": last["val_loss_full"] - ref_last["val_loss_full"],
                    "val_sparse_diff": last["val_loss_sparse"] - ref_last["val_loss_sparse"],
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="folder of seed-*/RUN/metrics.jsonl")
    parser.add_argument("--from-step", type=int, default=64, help="compare the logged steps after this one")
    args = parser.parse_args()
    print(
        f"| seed | run | mean Δ ce (steps > {args.from_step}) | mean abs Δ ce | "
        "final val loss full / sparse | Δ val full / sparse |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows(args.root, args.from_step):
        print(
            f"| {r['seed']} | {r['run']} | {r['mean_diff']:+.4f} | {r['mean_abs_diff']:.4f} | "
            f"{r['val_full']:.3f} / {r['val_sparse']:.3f} | "
            f"{r['val_full_diff']:+.3f} / {r['val_sparse_diff']:+.3f} |"
        )


if __name__ == "__main__":
    main()
