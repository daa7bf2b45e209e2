"""`ssa data ...`: command-line front end of the data pipeline (the work: tokenizer, shards, prepare).

    ssa data prepare                        # bundled corpus → data/build/default/{tokenizer,train,valid}
    ssa data tokenizer corpus.jsonl.xz --out tok/ --vocab-size 32000
    ssa data shards corpus.jsonl.xz --tokenizer tok/ --out shards/ --seq-len 8192 --workers 16

The top-level `ssa` command calls `add_data_commands(subparsers)`; each command stores its handler in
`args.func`, which returns the exit status (2 with an `error: ...` line on a `DataError`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssa_pretrain.errors import exits_on_user_error

DESCRIPTION = "Build training data: train a tokenizer, write packed shards, or prepare the bundled corpus."
EXAMPLES = """examples:
  ssa data prepare                       # bundled corpus → data/build/default/{tokenizer,train,valid}
  ssa data tokenizer corpus/ --out tok/ --vocab-size 32000
  ssa data shards corpus/ --tokenizer tok/ --out shards/ --seq-len 8192 --workers 16"""
INPUTS_HELP = (
    ".jsonl (a 'text' field per line), .txt (one document per file), .xz/.gz of these, or directories"
)


@exits_on_user_error
def _cmd_tokenizer(args: argparse.Namespace) -> int:
    from ssa_pretrain.data.tokenizer import Tokenizer, train_tokenizer

    path = train_tokenizer(args.inputs, args.out, vocab_size=args.vocab_size, num_threads=args.threads,
                           max_sentences=args.max_sentences, seed=args.seed)  # fmt: skip
    print(f"wrote {Tokenizer(path)}")
    return 0


@exits_on_user_error
def _cmd_shards(args: argparse.Namespace) -> int:
    from ssa_pretrain.data.shards import write_shards

    manifests = write_shards(
        args.inputs, args.tokenizer, args.out, args.seq_len, samples_per_shard=args.samples_per_shard,
        valid_fraction=args.valid_fraction, num_workers=args.workers, seed=args.seed,
        overwrite=args.overwrite,
    )  # fmt: skip
    for split, m in manifests.items():
        print(
            f"{Path(args.out) / split}: {m['num_samples']} samples, {m['num_tokens']} tokens, "
            f"{len(m['shards'])} shards"
        )
    return 0


@exits_on_user_error
def _cmd_prepare(args: argparse.Namespace) -> int:
    from ssa_pretrain.data.prepare import prepare_default

    result = prepare_default(args.out, vocab_size=args.vocab_size, seq_len=args.seq_len,
                             valid_fraction=args.valid_fraction, num_workers=args.workers, seed=args.seed,
                             force=args.force)  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


def _add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train a SentencePiece BPE tokenizer on text",
                       description="Train a BPE tokenizer (byte fallback; unk=0 bos=1 eos=2 pad=3) and write "
                       "tokenizer.model + tokenizer_meta.json to --out.")  # fmt: skip
    p.add_argument("inputs", nargs="+", help=INPUTS_HELP)
    p.add_argument("--out", required=True, help="tokenizer directory to write")
    p.add_argument("--vocab-size", type=int, default=8192, help="default: %(default)s")
    p.add_argument("--threads", type=int, default=None, help="training threads (default: all cores)")
    p.add_argument("--max-sentences", type=int, default=2_000_000,
                   help="train on a seeded sample of this many lines (default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.set_defaults(func=_cmd_tokenizer)

    p = sub.add_parser("shards", help="tokenize text into packed webdataset shards (train + valid)",
                       description="Tokenize documents, append EOS to each, pack into samples of seq_len + 1 "
                       "tokens and write OUT/train/ and OUT/valid/ (tar shards + manifest.json), "
                       "atomically.")  # fmt: skip
    p.add_argument("inputs", nargs="+", help=INPUTS_HELP)
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (or .model file)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument(
        "--seq-len", type=int, required=True, help="model sequence length (samples hold one token more)"
    )
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    p.add_argument("--valid-fraction", type=float, default=0.005,
                   help="fraction of documents held out for validation (default: %(default)s)")  # fmt: skip
    p.add_argument("--samples-per-shard", type=int, default=1024, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="shuffle and split seed (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset directory")
    p.set_defaults(func=_cmd_shards)

    p = sub.add_parser("prepare", help="tokenizer + shards from the bundled default corpus, in one go",
                       description="Build OUT/tokenizer, OUT/train and OUT/valid from "
                       "data/default-corpus.jsonl.xz (World English Bible + Python docs); steps already up "
                       "to date are skipped.")  # fmt: skip
    p.add_argument("--out", default=None, help="output directory (default: <repo>/data/build/default)")
    p.add_argument("--seq-len", type=int, default=256, help="default: %(default)s")
    p.add_argument("--vocab-size", type=int, default=8192, help="default: %(default)s")
    p.add_argument("--valid-fraction", type=float, default=0.02, help="default: %(default)s")
    p.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.set_defaults(func=_cmd_prepare)


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `data` (with `tokenizer`, `shards`, `prepare`) on the top-level `ssa` subparsers."""
    data = subparsers.add_parser("data", help="tokenizer, shards and the bundled default corpus",
                                 description=DESCRIPTION, epilog=EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    _add_commands(data.add_subparsers(dest="data_command", required=True, metavar="COMMAND"))
    return data
