"""Train an SSA model: one config file, dotted overrides, one run directory.

    ssa train configs/train/tiny-cpu.yaml --run-dir runs/demo train.steps=50
    torchrun --nproc-per-node 8 -m ssa_pretrain.train configs/train/1b-8k.yaml --run-dir runs/1b
    srun python -m ssa_pretrain.train configs/train/1b-8k.yaml --run-dir runs/1b     (one task per GPU)

A run directory that holds a checkpoint is resumed from its latest one, with the config the run was saved
with: a changed optimizer, schedule or method setting is refused unless `--allow-config-change` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssa_pretrain import quiet
from ssa_pretrain.config import load_config, read_deepspeed_json
from ssa_pretrain.data.tokenizer import Tokenizer
from ssa_pretrain.errors import exits_on_user_error


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="run config (YAML), e.g. configs/train/tiny-cpu.yaml")
    parser.add_argument("--run-dir", type=Path, help="run directory (default: runs/<config name>)")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="on resume, apply changed optimizer / schedule / method settings (e.g. train.lr, train.steps) "
        "from the checkpoint's step on, recorded in RUN_DIR/config-changes.jsonl; without it such a resume "
        "is refused and the run's saved config stays in force",
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. train.steps=20 ssa.full_ratio=0.25"
    )
    return parser


@exits_on_user_error
def run(args: argparse.Namespace) -> int:
    """Train with parsed arguments. Bad input (config, data, checkpoint) exits with code 2 and its message; a
    run that cannot go on (`TrainingError`) with code 1; neither prints a traceback."""
    cfg = load_config(args.config, args.overrides)
    read_deepspeed_json(cfg.train)  # a missing DeepSpeed file fails now, not after start-up
    Tokenizer(cfg.data.tokenizer_dir)  # no data yet: say how to build it before Megatron and DeepSpeed start
    from ssa_pretrain.trainer import Trainer, TrainingError  # heavy imports once the config is known good

    quiet.announce_deepspeed_op_build()
    run_dir = args.run_dir or Path("runs") / Path(args.config).stem
    trainer = Trainer(cfg, run_dir, allow_config_change=args.allow_config_change)
    try:
        trainer.train()
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    return 0


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting `section.key=value` overrides stand anywhere (also after `--run-dir DIR`)."""
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-") or "=" not in item]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    quiet.install()
    parser = add_arguments(
        argparse.ArgumentParser(
            prog="python -m ssa_pretrain.train",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return run(parse_with_overrides(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
