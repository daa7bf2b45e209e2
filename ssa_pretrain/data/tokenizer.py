"""Train and load the SentencePiece BPE tokenizer.

A tokenizer directory holds two files:

* `tokenizer.model`: the SentencePiece model (BPE, byte fallback, identity normalisation, so
  `decode(encode(text)) == text` for any UTF-8 text);
* `tokenizer_meta.json`: vocab size, special ids, the model file's sha256 and how it was trained.

Special ids are fixed: unk=0, bos=1, eos=2, pad=3. Shards record the model's sha256; the loader compares it
with the run's tokenizer so a dataset is never read with a tokenizer it was not built with.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from ssa_pretrain.data.documents import expand_inputs, iter_documents
from ssa_pretrain.data.errors import DataError, missing_data_hint

MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer_meta.json"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3


def _training_sentences(docs: Iterable[str], max_sentence_length: int) -> Iterator[str]:
    """Lines of the documents (SentencePiece trains on lines), long lines cut at spaces to fit."""
    for doc in docs:
        for line in doc.split("\n"):
            while len(line.encode("utf-8")) > max_sentence_length:
                cut = line.rfind(" ", 0, max_sentence_length // 4)  # // 4: a UTF-8 char is at most 4 bytes
                cut = cut if cut > 0 else max_sentence_length // 4
                yield line[:cut]
                line = line[cut:]
            if line.strip():
                yield line


def _reservoir_sample(items: Iterable[str], k: int, seed: int) -> tuple[list[str], int]:
    """Uniform sample of `k` items in one pass (Algorithm R), seeded; returns (sample, number seen)."""
    rng, sample, seen = random.Random(seed), [], 0
    for seen, item in enumerate(items, start=1):
        if len(sample) < k:
            sample.append(item)
        elif (j := rng.randrange(seen)) < k:
            sample[j] = item
    return sample, seen


def _train_spm(
    sentences: list[str],
    model: io.BytesIO,
    vocab_size: int,
    max_sentence_length: int,
    num_threads: int | None,
) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,  # no <unk> for unseen characters: they become UTF-8 byte pieces
        character_coverage=0.9995,  # the rarest 0.05% of characters go to byte pieces
        split_digits=True,  # numbers tokenise digit by digit
        normalization_rule_name="identity",  # keep text as is (no NFKC) ...
        remove_extra_whitespaces=False,  # ... and keep indentation: code is part of the corpus
        add_dummy_prefix=False,  # so decode(encode(text)) == text exactly
        allow_whitespace_only_pieces=True,
        unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
        max_sentence_length=max_sentence_length,
        input_sentence_size=0,  # we sampled already
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=2,
    )  # fmt: skip


def train_tokenizer(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    vocab_size: int = 8192,
    max_sentence_length: int = 8192,  # bytes; longer lines are cut at a space
    num_threads: int | None = None,  # default: all cores
    max_sentences: int = 2_000_000,  # a uniform sample of lines bounds time and memory on large corpora
    seed: int = 0,
    provenance: dict | None = None,
) -> Path:
    """Train a BPE tokenizer on the documents of `inputs`; write `tokenizer.model` + `tokenizer_meta.json`.

    Lines beyond `max_sentences` are subsampled uniformly (seeded, so the model is reproducible). Returns the
    model path. `provenance` (JSON-serialisable) is stored in the metadata under `training`.
    """
    out_dir = Path(out_dir)
    files = expand_inputs(inputs)
    start = time.perf_counter()
    sentences, seen = _reservoir_sample(
        _training_sentences(iter_documents(files), max_sentence_length), max_sentences, seed
    )
    if not sentences:
        raise DataError(f"{', '.join(map(str, files))}: no text to train a tokenizer on")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        _train_spm(sentences, model, vocab_size, max_sentence_length, num_threads)
    except RuntimeError as e:  # e.g. "Vocabulary size is too high": the corpus is too small for vocab_size
        raise DataError(f"{', '.join(map(str, files))}: SentencePiece training failed: {e}") from e
    data = model.getvalue()
    meta = {
        "format": "sentencepiece",
        "model_type": "bpe",
        "vocab_size": spm.SentencePieceProcessor(model_proto=data).get_piece_size(),
        "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, "pad_id": PAD_ID,
        "byte_fallback": True,
        "sha256": hashlib.sha256(data).hexdigest(),
        "sentencepiece_version": spm.__version__,
        "training": {
            "inputs": [str(f) for f in files],
            "sentences_seen": seen,
            "sentences_used": len(sentences),
            "chars_used": sum(map(len, sentences)),
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 2),
            **({"provenance": provenance} if provenance else {}),
        },
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    # model first, metadata last: a directory with metadata always has the model the metadata describes
    _atomic_write(out_dir / MODEL_FILE, data)
    _atomic_write(out_dir / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return out_dir / MODEL_FILE


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_meta(path: str | Path) -> dict | None:
    """The `tokenizer_meta.json` next to (or in) `path`, or None when there is none."""
    path = Path(path)
    meta = (path if path.is_dir() else path.parent) / META_FILE
    return json.loads(meta.read_text()) if meta.is_file() else None


class Tokenizer:
    """A trained SentencePiece model: `encode`/`decode` plus the ids and the hash the data pipeline needs.

    `path` is a tokenizer directory or a `.model` file. The model is hashed and loaded from the same bytes,
    so `sha256` always describes the model in use.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.model_path = path / MODEL_FILE if path.is_dir() else path
        if not self.model_path.is_file():
            hint = missing_data_hint(self.model_path)
            raise DataError(f"{self.model_path}: tokenizer model not found; {hint}")
        data = self.model_path.read_bytes()
        self.sha256: str = hashlib.sha256(data).hexdigest()
        meta = read_meta(self.model_path)
        if meta is not None and meta.get("sha256") != self.sha256:
            raise DataError(
                f"{self.model_path}: sha256 {self.sha256[:12]}… does not match {META_FILE} "
                f"({str(meta.get('sha256'))[:12]}…); the model file was replaced: retrain with "
                "`ssa data tokenizer`"
            )
        self.sp = spm.SentencePieceProcessor(model_proto=data)
        self.vocab_size: int = self.sp.get_piece_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()
        self.unk_id: int = self.sp.unk_id()
        if min(self.bos_id, self.eos_id, self.pad_id) < 0:
            raise DataError(
                f"{self.model_path}: model has no bos/eos/pad id; retrain with `ssa data tokenizer`"
            )

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """`encode` for many texts in one call; SentencePiece may use `num_threads` threads (1: the data
        pipeline parallelises over processes instead)."""
        return self.sp.encode(texts, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (special tokens are dropped)."""
        return self.sp.decode(list(map(int, ids)))

    def __repr__(self) -> str:
        return (
            f"Tokenizer({str(self.model_path)!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]}…)"
        )
