"""Data pipeline: text → tokenizer → packed webdataset shards → micro-batches.

    documents.py   read .jsonl / .txt (+ .xz / .gz) documents
    tokenizer.py   train / load the SentencePiece BPE tokenizer
    shards.py      tokenize, pack and write shards + manifests
    prepare.py     the bundled default corpus → tokenizer + shards (`ssa data prepare`)
    manifest.py    the manifest format and the integrity checks
    loader.py      resumable data-parallel training loader, validation iterator (imports torch)
    cli.py         `ssa data tokenizer | shards | prepare`

The names below are imported lazily: `ssa data ...` and `ssa --help` do not import webdataset or torch.
"""

import importlib

from ssa_pretrain.data.errors import DataError

_LAZY = {
    "ShardLoader": "loader",
    "iter_validation": "loader",
    "prepare_default": "prepare",
    "write_shards": "shards",
    "Tokenizer": "tokenizer",
    "train_tokenizer": "tokenizer",
}

__all__ = ["DataError", *_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
