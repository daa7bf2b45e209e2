"""Data-test fixtures: a slice of the bundled corpus, a small tokenizer and a small dataset, built once."""

from __future__ import annotations

import io
import json
import lzma
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ssa_pretrain.data.manifest import load_manifest
from ssa_pretrain.data.prepare import DEFAULT_CORPUS
from ssa_pretrain.data.shards import write_shards
from ssa_pretrain.data.tokenizer import Tokenizer, train_tokenizer

SEQ_LEN = 32
SAMPLES_PER_SHARD = 128


def read_split(split_dir) -> np.ndarray:
    """All samples of a split, [num_samples, seq_len + 1], in stored order (read with plain tarfile)."""
    rows = []
    for shard in load_manifest(split_dir)["shards"]:
        with tarfile.open(split_dir / shard["file"]) as tf:
            for member in tf:
                rows.append(np.load(io.BytesIO(tf.extractfile(member).read()), allow_pickle=False))
    return np.stack(rows)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """30 Bible chapters + 4 Python docs pages of the bundled corpus (≈ 200k characters), as .jsonl."""
    if not DEFAULT_CORPUS.is_file():
        pytest.fail(f"{DEFAULT_CORPUS} missing: the bundled corpus ships in data/ (see data/README.md)")
    with lzma.open(DEFAULT_CORPUS, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    bible = [d for d in docs if d["source"].startswith("web/")][:30]
    python = [d for d in docs if d["source"].startswith("python-docs/tutorial/")][:4]
    path = tmp_path_factory.mktemp("corpus") / "slice.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in bible + python))
    return path


@pytest.fixture(scope="session")
def documents(corpus) -> list[str]:
    """The texts of `corpus`, in file order."""
    return [json.loads(line)["text"] for line in corpus.read_text().splitlines()]


@pytest.fixture(scope="session")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    """A 512-piece BPE tokenizer trained on `corpus`."""
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer([corpus], out, vocab_size=512, num_threads=2)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def dataset(corpus, tokenizer_dir, tmp_path_factory) -> Path:
    """Shards of `corpus` (seq_len 32, 128 samples per shard, 10% of documents held out).

    Read-only: tests that damage it work on a copy (`dataset_copy`)."""
    out = tmp_path_factory.mktemp("dataset") / "ds"
    write_shards([corpus], tokenizer_dir, out, SEQ_LEN, samples_per_shard=SAMPLES_PER_SHARD,
                 valid_fraction=0.1, num_workers=1, progress=False)  # fmt: skip
    return out


@pytest.fixture
def dataset_copy(dataset, tmp_path) -> Path:
    """A private copy of `dataset` that a test may damage."""
    return Path(shutil.copytree(dataset, tmp_path / "ds"))
