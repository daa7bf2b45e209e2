"""Data pipeline: text → tokenizer → packed webdataset shards → micro-batches.

    documents.py   read .jsonl / .txt (+ .xz / .gz) documents
    tokenizer.py   train / load the SentencePiece BPE tokenizer
    shards.py      tokenize, pack and write shards + manifests; prepare the bundled default corpus
    manifest.py    the manifest format and the integrity checks
    loader.py      resumable data-parallel training loader, validation iterator (imports torch)
    cli.py         `ssa data tokenizer | shards | prepare`

The loader names are imported lazily so that building data does not import torch.
"""

from ssa_pretrain.data.errors import DataError
from ssa_pretrain.data.shards import prepare_default, write_shards
from ssa_pretrain.data.tokenizer import Tokenizer, train_tokenizer

__all__ = ["DataError", "ShardLoader", "Tokenizer", "iter_validation", "prepare_default", "train_tokenizer",
           "write_shards"]  # fmt: skip


def __getattr__(name: str) -> object:
    if name in ("ShardLoader", "iter_validation"):
        from ssa_pretrain.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
