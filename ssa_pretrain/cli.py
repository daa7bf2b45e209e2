"""The `ssa` command: train, data, sweep, convert, eval, elastic, params, plot (`ssa COMMAND --help`).

Importing this module stays light (no torch, Megatron, DeepSpeed, transformers or matplotlib): each command
imports what it needs when it runs, so `ssa --help` and bad arguments answer at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssa_pretrain import quiet, train
from ssa_pretrain.config import ConfigError, apply_overrides, build_config, read_yaml
from ssa_pretrain.data.cli import add_data_commands
from ssa_pretrain.elastic.cli import add_elastic_commands
from ssa_pretrain.errors import UserError, exits_on_user_error
from ssa_pretrain.eval.cli import add_eval_command
from ssa_pretrain.hf.cli import add_convert_command
from ssa_pretrain.sweep.cli import add_sweep_commands


@exits_on_user_error
def params(args: argparse.Namespace) -> int:
    """Print the parameter count of a config's model (analytic; the tests check it against Megatron)."""
    from ssa_pretrain.model.gpt import count_parameters, padded_vocab_size

    data = apply_overrides(read_yaml(args.config), args.overrides)
    data.setdefault("train", {"steps": 1})  # a model config alone has no training section; none is needed
    cfg = build_config(data, source=args.config)
    vocab = args.vocab_size or cfg.model.vocab_size
    if vocab is None:
        raise ConfigError("the config takes its vocabulary from the tokenizer; pass --vocab-size N")
    padded = padded_vocab_size(vocab, cfg.model, 1)
    total = count_parameters(cfg.model, padded, cfg.ssa.output_gate)
    embedding = padded * cfg.model.hidden_size * (1 if cfg.model.tie_embeddings else 2)
    print(f"vocabulary {vocab} (padded to {padded})")
    print(f"embedding{' (tied)' if cfg.model.tie_embeddings else 's'}: {embedding:,}")
    print(f"non-embedding: {total - embedding:,}")
    print(f"total: {total:,} ({total / 1e9:.3f} B)")
    return 0


class PlotError(UserError, ValueError):
    """`ssa plot` was given a run directory without metrics or an output file it cannot write."""


@exits_on_user_error
def plot(args: argparse.Namespace) -> int:
    """Plot training and validation loss of one or more run directories into one PNG."""
    from ssa_pretrain.sweep.report import plot_loss_curves

    runs = {Path(d).name: Path(d) for d in args.run_dirs}
    for run_dir in runs.values():
        if not (run_dir / "metrics.jsonl").is_file():
            what = "no metrics.jsonl in it" if run_dir.is_dir() else "no such directory"
            raise PlotError(f"{run_dir}: {what}; pass run directories of `ssa train` (RUN_DIR/metrics.jsonl)")
    if not args.out.parent.is_dir():
        raise PlotError(f"{args.out.parent}: no such directory for --out {args.out}; create it first")
    plot_loss_curves(args.out, runs)
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssa", description="SSA pretraining stack: data, training, tools.")
    commands = parser.add_subparsers(dest="command", required=True)

    train_cmd = commands.add_parser(
        "train",
        help="train a model (resumes a run directory with a checkpoint)",
        description=train.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_arguments(train_cmd).set_defaults(func=train.run)

    params_cmd = commands.add_parser("params", help="print the parameter count of a model or run config")
    params_cmd.add_argument("config", help="a model config (configs/model/1b.yaml) or a run config")
    params_cmd.add_argument(
        "--vocab-size", type=int, help="vocabulary size (default: the config's model.vocab_size)"
    )
    params_cmd.add_argument("overrides", nargs="*", help="dotted overrides")
    params_cmd.set_defaults(func=params)

    plot_cmd = commands.add_parser("plot", help="plot the loss curves of run directories into a PNG")
    plot_cmd.add_argument("run_dirs", nargs="+", help="run directories (each with metrics.jsonl)")
    plot_cmd.add_argument("--out", type=Path, required=True, help="PNG file to write")
    plot_cmd.set_defaults(func=plot)

    add_data_commands(commands)
    add_sweep_commands(commands)
    add_convert_command(commands)
    add_eval_command(commands)
    add_elastic_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet.install()
    args = train.parse_with_overrides(build_parser(), argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
