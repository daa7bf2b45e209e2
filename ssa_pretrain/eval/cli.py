"""`ssa eval ppl|sparsity|niah|elastic HF_DIR ...`: evaluate a Hugging Face export (of `ssa convert`).

    ssa eval ppl runs/300m/hf --data data/build/default --out eval/ppl --lengths 1024 4096 8192 \\
        --block-counts 2 4 8 16 32
    ssa eval sparsity runs/300m/hf --data data/build/default --out eval/sparsity --block-count 16
    ssa eval niah runs/300m/hf --out eval/niah --lengths 4096 8192 16384 32768 \\
        --rope-scaling llama3 --rope-factor 4
    ssa eval elastic runs/300m/hf-elastic --out eval/elastic     # an export of `ssa elastic train`

Each command writes JSON, a markdown table and a PNG into OUT, which appears only when all of them are
written (an existing non-empty OUT needs --overwrite). `--data` is a shard directory (a dataset directory,
whose valid/ split is used, or a split directory) or text (`.txt`/`.jsonl` files or a directory of them),
tokenized with the export's tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib

from ssa_pretrain.docstrings import module_doc
from ssa_pretrain.errors import exits_on_user_error
from ssa_pretrain.eval.options import (
    ElasticOptions,
    LoadOptions,
    NiahOptions,
    PplOptions,
    SparsityOptions,
    flag,
)

COMMANDS: dict[str, tuple[type, str]] = {
    "ppl": (PplOptions, "perplexity vs length, full vs sparse, budget sweep"),
    "sparsity": (SparsityOptions, "dropped attention mass and KL(full || sparse) per layer"),
    "niah": (NiahOptions, "needle-in-a-haystack heat map, full vs sparse"),
    "elastic": (
        ElasticOptions,
        "an elastic export's routers: quality vs achieved sparsity per task tag, head-mode map",
    ),
}
"""`ssa eval NAME`: its options and its help line; `evaluate_NAME` of `ssa_pretrain/eval/NAME.py` runs it."""


def add_options(cmd: argparse.ArgumentParser, options: type) -> None:
    """A flag per field of the options dataclass, with the field's default and help (no default: required)."""
    for field in dataclasses.fields(options):
        kwargs = dict(field.metadata["argparse"])
        if field.default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = field.default
        cmd.add_argument(flag(field.name), help=field.metadata["doc"], **kwargs)


def parsed(args: argparse.Namespace, options: type):
    """The `add_options` flags of `args` as an `options` instance."""
    return options(**{field.name: getattr(args, field.name) for field in dataclasses.fields(options)})


@exits_on_user_error
def eval_command(args: argparse.Namespace) -> int:
    """`ssa eval NAME ...`: `evaluate_NAME` (its module imports torch: only when a command runs)."""
    name = args.eval_command
    evaluate = getattr(importlib.import_module(f"ssa_pretrain.eval.{name}"), f"evaluate_{name}")
    options = parsed(args, COMMANDS[name][0])
    evaluate(args.hf_dir, args.out, options, overwrite=args.overwrite, load=parsed(args, LoadOptions))
    print(f"wrote {args.out}/{name}.json, {name}.md, {name}.png")
    return 0


def add_eval_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `ssa eval {ppl,sparsity,niah,elastic}` on the `ssa` command's subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    cmd = subparsers.add_parser(
        "eval",
        help="evaluate an exported model: " + ", ".join(COMMANDS),
        description=__doc__,
        formatter_class=raw,
    )
    commands = cmd.add_subparsers(dest="eval_command", required=True)
    for name, (options, summary) in COMMANDS.items():
        command = commands.add_parser(
            name, help=summary, description=module_doc(f"ssa_pretrain.eval.{name}"), formatter_class=raw
        )
        command.add_argument("hf_dir", help="the Hugging Face model directory written by `ssa convert`")
        command.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
        command.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
        add_options(command, LoadOptions)
        add_options(command, options)
        command.set_defaults(func=eval_command)
