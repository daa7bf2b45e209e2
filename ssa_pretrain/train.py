"""Train an SSA model: one config file, dotted overrides, one run directory.

    ssa train configs/train/tiny-cpu.yaml --run-dir runs/demo train.steps=50
    torchrun --nproc-per-node 8 -m ssa_pretrain.train configs/train/1b-8k.yaml --run-dir runs/1b
    srun python -m ssa_pretrain.train configs/train/1b-8k.yaml --run-dir runs/1b     (one task per GPU)

A run directory that holds a checkpoint is resumed from its latest one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssa_pretrain.checkpoint import CheckpointError
from ssa_pretrain.config import ConfigError, load_config
from ssa_pretrain.data.loader import DataError


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="run config (YAML), e.g. configs/train/tiny-cpu.yaml")
    parser.add_argument("--run-dir", type=Path, help="run directory (default: runs/<config name>)")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. train.steps=20 ssa.full_ratio=0.25"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Train with parsed arguments; bad input ends with its message and exit code 2, not a traceback."""
    try:
        cfg = load_config(args.config, args.overrides)
        from ssa_pretrain.trainer import Trainer  # heavy imports after the config is known to be good

        trainer = Trainer(cfg, args.run_dir or Path("runs") / Path(args.config).stem)
    except (ConfigError, DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    finally:
        trainer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(
        argparse.ArgumentParser(
            prog="python -m ssa_pretrain.train",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
