"""`ssa convert RUN_DIR_OR_CHECKPOINT OUT_DIR`: export a checkpoint to a Hugging Face model directory."""

from __future__ import annotations

import argparse

from ssa_pretrain.errors import exits_on_user_error


@exits_on_user_error
def convert_command(args: argparse.Namespace) -> int:
    """Convert, check the logits in both modes, print where the model went."""
    from ssa_pretrain.hf.convert import convert

    summary = convert(args.source, args.out_dir, overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    print(f"wrote {args.out_dir} from {summary['checkpoint']} (step {summary['step']})")
    return 0


def add_convert_command(subparsers) -> None:
    """Register `ssa convert` on the `ssa` command's subparsers."""
    from ssa_pretrain.docstrings import module_doc

    cmd = subparsers.add_parser(
        "convert",
        help="export a checkpoint to a Hugging Face model directory (checked against the training model)",
        description=module_doc("ssa_pretrain.hf.convert"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "source", help="a run directory (its latest checkpoint) or RUN_DIR/checkpoints/step-NNNNNN"
    )
    cmd.add_argument("out_dir", help="the Hugging Face directory to create")
    cmd.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    cmd.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors file before sharding (default: 5GB)"
    )
    cmd.set_defaults(func=convert_command)
