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

from ssa_pretrain.docstrings import module_doc
from ssa_pretrain.errors import exits_on_user_error
from ssa_pretrain.eval import ROPE_TYPES


def add_model_options(cmd: argparse.ArgumentParser, data: bool) -> None:
    """HF_DIR, [--data], --out, --overwrite, and how the model runs (device, dtype, RoPE scaling)."""
    cmd.add_argument("hf_dir", help="the Hugging Face model directory written by `ssa convert`")
    if data:
        cmd.add_argument(
            "--data",
            required=True,
            help="shard directory (its valid/ split) or .txt/.jsonl text to evaluate on",
        )
    cmd.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    cmd.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    cmd.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    cmd.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype"
    )
    cmd.add_argument(
        "--rope-scaling",
        choices=ROPE_TYPES,
        help="RoPE scaling for lengths beyond training (transformers' implementation; llama3 with Llama "
        "3.1's frequency factors); the original length is the export's max_position_embeddings",
    )
    cmd.add_argument("--rope-factor", type=float, help="RoPE scaling factor (> 1), with --rope-scaling")


def model_options(args: argparse.Namespace) -> dict:
    """The `add_model_options` values as the `evaluate_*` functions take them: `overwrite` and `load`."""
    from ssa_pretrain.eval.common import LoadOptions  # imports torch: only when a command runs

    load = LoadOptions(args.device, args.dtype, args.rope_scaling, args.rope_factor)
    return {"overwrite": args.overwrite, "load": load}


@exits_on_user_error
def ppl_command(args: argparse.Namespace) -> int:
    """Perplexity at several lengths, full vs sparse, and the block_count budget curve."""
    from ssa_pretrain.eval.ppl import evaluate_ppl

    evaluate_ppl(
        args.hf_dir,
        args.data,
        args.out,
        lengths=args.lengths,
        block_counts=args.block_counts,
        windows=args.windows,
        batch_size=args.batch_size,
        **model_options(args),
    )
    print(f"wrote {args.out}/ppl.json, ppl.md, ppl.png")
    return 0


@exits_on_user_error
def sparsity_command(args: argparse.Namespace) -> int:
    """Dropped attention mass and KL(full ‖ sparse) per layer."""
    from ssa_pretrain.eval.sparsity import evaluate_sparsity

    evaluate_sparsity(
        args.hf_dir,
        args.data,
        args.out,
        length=args.length,
        block_count=args.block_count,
        windows=args.windows,
        batch_size=args.batch_size,
        **model_options(args),
    )
    print(f"wrote {args.out}/sparsity.json, sparsity.md, sparsity.png")
    return 0


@exits_on_user_error
def niah_command(args: argparse.Namespace) -> int:
    """Needle-in-a-haystack over lengths and depths, full vs sparse."""
    from ssa_pretrain.eval.niah import evaluate_niah

    evaluate_niah(
        args.hf_dir,
        args.out,
        lengths=args.lengths,
        depths=args.depths,
        trials=args.trials,
        distractors=args.distractors,
        digits=args.digits,
        block_count=args.block_count,
        seed=args.seed,
        **model_options(args),
    )
    print(f"wrote {args.out}/niah.json, niah.md, niah.png")
    return 0


@exits_on_user_error
def elastic_command(args: argparse.Namespace) -> int:
    """The routers on the held-out task mix: Ω, answer loss and exact match per tag and mode; head map."""
    from ssa_pretrain.eval.elastic import evaluate_elastic

    evaluate_elastic(
        args.hf_dir,
        args.out,
        seq_len=args.seq_len,
        examples_per_task=args.examples_per_task,
        corpus=args.corpus,
        batch_size=args.batch_size,
        **model_options(args),
    )
    print(f"wrote {args.out}/elastic.json, elastic.md, elastic.png")
    return 0


def add_eval_command(subparsers: argparse._SubParsersAction) -> None:
    """Register `ssa eval {ppl,sparsity,niah,elastic}` on the `ssa` command's subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    cmd = subparsers.add_parser(
        "eval",
        help="evaluate an exported model: ppl, sparsity, niah, elastic",
        description=__doc__,
        formatter_class=raw,
    )
    commands = cmd.add_subparsers(dest="eval_command", required=True)

    ppl_cmd = commands.add_parser(
        "ppl",
        help="perplexity vs length, full vs sparse, budget sweep",
        description=module_doc("ssa_pretrain.eval.ppl"),
        formatter_class=raw,
    )
    add_model_options(ppl_cmd, data=True)
    ppl_cmd.add_argument(
        "--lengths", type=int, nargs="+", help="context lengths (default: the training length)"
    )
    ppl_cmd.add_argument(
        "--block-counts", type=int, nargs="+", help="sparse budgets besides the export's block_count"
    )
    ppl_cmd.add_argument(
        "--windows",
        type=int,
        default=16,
        help="windows of the longest length (default 16); shorter lengths score the same tokens",
    )
    ppl_cmd.add_argument("--batch-size", type=int, default=4, help="windows per forward (default 4)")
    ppl_cmd.set_defaults(func=ppl_command)

    sparsity_cmd = commands.add_parser(
        "sparsity",
        help="dropped attention mass and KL(full || sparse) per layer",
        description=module_doc("ssa_pretrain.eval.sparsity"),
        formatter_class=raw,
    )
    add_model_options(sparsity_cmd, data=True)
    sparsity_cmd.add_argument("--length", type=int, help="window length (default: the training length)")
    sparsity_cmd.add_argument("--block-count", type=int, help="sparse budget K (default: the export's)")
    sparsity_cmd.add_argument("--windows", type=int, default=4, help="windows to evaluate (default 4)")
    sparsity_cmd.add_argument("--batch-size", type=int, default=2, help="windows per forward (default 2)")
    sparsity_cmd.set_defaults(func=sparsity_command)

    niah_cmd = commands.add_parser(
        "niah",
        help="needle-in-a-haystack heat map, full vs sparse",
        description=module_doc("ssa_pretrain.eval.niah"),
        formatter_class=raw,
    )
    add_model_options(niah_cmd, data=False)
    niah_cmd.add_argument(
        "--lengths", type=int, nargs="+", help="context lengths (default: the training length)"
    )
    niah_cmd.add_argument(
        "--depths", type=float, nargs="+", help="needle depths in [0, 1] (default 0 .25 .5 .75 1)"
    )
    niah_cmd.add_argument("--trials", type=int, default=4, help="trials per cell (default 4)")
    niah_cmd.add_argument(
        "--distractors", type=int, default=9, help="wrong values scored per trial (default 9)"
    )
    niah_cmd.add_argument("--digits", type=int, default=5, help="digits of the secret value (default 5)")
    niah_cmd.add_argument("--block-count", type=int, help="sparse budget K (default: the export's)")
    niah_cmd.add_argument("--seed", type=int, default=0, help="seed of keys, values and filler offsets")
    niah_cmd.set_defaults(func=niah_command)

    elastic_cmd = commands.add_parser(
        "elastic",
        help="an elastic export's routers: quality vs achieved sparsity per task tag, head-mode map",
        description=module_doc("ssa_pretrain.eval.elastic"),
        formatter_class=raw,
    )
    add_model_options(elastic_cmd, data=False)
    elastic_cmd.add_argument("--corpus", help="documents for the task mix (default: as the router trained)")
    elastic_cmd.add_argument(
        "--seq-len", type=int, help="tokens per example (default: as the router trained)"
    )
    elastic_cmd.add_argument(
        "--examples-per-task", type=int, help="held-out examples per task (default: as the router trained)"
    )
    elastic_cmd.add_argument("--batch-size", type=int, default=8, help="examples per forward (default 8)")
    elastic_cmd.set_defaults(func=elastic_command)
