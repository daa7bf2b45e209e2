"""Tokenizer training and loading: special ids, metadata, exact round trip, reproducibility, tamper check."""

from __future__ import annotations

import hashlib
import json

import pytest

from ssa_pretrain.data import DataError, Tokenizer, train_tokenizer
from ssa_pretrain.data.tokenizer import META_FILE, MODEL_FILE


def test_special_ids_and_metadata(tokenizer, tokenizer_dir):
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2, 3)
    assert tokenizer.vocab_size == 512
    meta = json.loads((tokenizer_dir / META_FILE).read_text())
    assert meta["sha256"] == hashlib.sha256((tokenizer_dir / MODEL_FILE).read_bytes()).hexdigest()
    assert meta["sha256"] == tokenizer.sha256
    assert meta["vocab_size"] == 512 and meta["eos_id"] == 2 and meta["pad_id"] == 3
    assert Tokenizer(tokenizer_dir / MODEL_FILE).sha256 == tokenizer.sha256  # a .model path works too


@pytest.mark.parametrize(
    "text",
    [
        "In the beginning God created the heavens.",
        "def f(x):\n    return x\t# tab\n",
        "Éléonore 景太郎 🙂",
        "",
    ],
    ids=["prose", "code", "unicode", "empty"],
)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids  # byte fallback: nothing is unknown
    assert tokenizer.decode(ids) == text


def test_round_trip_on_corpus(tokenizer, documents):
    encoded = tokenizer.encode_batch(documents)
    assert encoded == [tokenizer.encode(d) for d in documents]
    assert [tokenizer.decode(ids) for ids in encoded] == documents


def test_training_is_reproducible(corpus, tokenizer, tmp_path):
    train_tokenizer([corpus], tmp_path, vocab_size=512, num_threads=2)
    assert Tokenizer(tmp_path).sha256 == tokenizer.sha256


def test_replaced_model_file_is_detected(tokenizer_dir, tmp_path):
    (tmp_path / MODEL_FILE).write_bytes((tokenizer_dir / MODEL_FILE).read_bytes())
    meta = json.loads((tokenizer_dir / META_FILE).read_text())
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(DataError, match="does not match"):
        Tokenizer(tmp_path)


def test_missing_model(tmp_path):
    with pytest.raises(DataError, match="ssa data tokenizer"):
        Tokenizer(tmp_path)


def test_vocab_too_large_for_the_text(tmp_path):
    (tmp_path / "tiny.txt").write_text("a tiny corpus\n")
    with pytest.raises(DataError, match=r"tiny\.txt: SentencePiece training failed"):
        train_tokenizer([tmp_path / "tiny.txt"], tmp_path / "tok", vocab_size=5000)
