"""`ssa elastic train CONFIG [key=value ...]`: train a head router on a frozen SSA model (Elastic
Attention)."""

from __future__ import annotations

import argparse

from ssa_pretrain.errors import exits_on_user_error


@exits_on_user_error
def train_command(args: argparse.Namespace) -> int:
    """Load and check the config, train the routers, print the held-out Ω and exact match per tag."""
    from ssa_pretrain.elastic.config import load_elastic_config
    from ssa_pretrain.elastic.train import train_router

    cfg = load_elastic_config(args.config, args.overrides)
    report = train_router(cfg, overwrite=args.overwrite)
    for tag, row in report["tags"].items():
        exact = " ".join(f"{m} {row[m]['exact_match']:.3f}" for m in ("full", "sparse", "elastic"))
        print(f"{tag}: Ω {row['omega']:.3f} (target {cfg.targets[tag]}) | exact match {exact}")
    print(
        f"wrote {cfg.out} (inference_mode elastic); evaluate it with `ssa eval elastic {cfg.out} --out DIR`"
    )
    return 0


def add_elastic_commands(subparsers) -> None:
    """Register `ssa elastic train` on the `ssa` command's subparsers."""
    from ssa_pretrain.docstrings import module_doc

    cmd = subparsers.add_parser("elastic", help="Elastic Attention: train a full/sparse head router")
    commands = cmd.add_subparsers(dest="elastic_command", required=True)
    train_cmd = commands.add_parser(
        "train",
        help="train the router of a frozen SSA model on the tagged task mix; writes an elastic export",
        description=module_doc("ssa_pretrain.elastic.train"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train_cmd.add_argument("config", help="an elastic config, e.g. configs/elastic/tiny.yaml")
    train_cmd.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. model=runs/demo/hf train.steps=300"
    )
    train_cmd.add_argument("--overwrite", action="store_true", help="replace the config's out directory")
    train_cmd.set_defaults(func=train_command)
