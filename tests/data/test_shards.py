"""Shard writing: packing, document-level split, manifests, reproducibility, atomic writes, input formats."""

from __future__ import annotations

import gzip
import itertools
import json

import numpy as np
import pytest

from ssa_pretrain.data import DataError, Tokenizer, prepare_default, write_shards
from ssa_pretrain.data import prepare as prepare_module
from ssa_pretrain.data import shards as shards_module
from ssa_pretrain.data.manifest import load_manifest, sha256_file, verify_shards
from ssa_pretrain.data.shards import split_of

from .conftest import SAMPLES_PER_SHARD, SEQ_LEN, read_split


def test_packing_is_the_concatenated_encodings(corpus, documents, tokenizer, tokenizer_dir, tmp_path):
    # no shuffle, no validation split: the stream must be exactly encode(doc) + [eos], doc after doc
    m = write_shards([corpus], tokenizer_dir, tmp_path / "ds", SEQ_LEN, samples_per_shard=100,
                     valid_fraction=0, shuffle_window=1, num_workers=1, progress=False)["train"]  # fmt: skip
    samples = read_split(tmp_path / "ds" / "train")
    assert samples.shape == (m["num_samples"], SEQ_LEN + 1) and samples.dtype == np.uint16
    expected = np.concatenate([np.array([*tokenizer.encode(d), tokenizer.eos_id]) for d in documents])
    kept = len(expected) // (SEQ_LEN + 1) * (SEQ_LEN + 1)
    np.testing.assert_array_equal(samples.reshape(-1), expected[:kept])
    assert m["dropped_tokens"] == len(expected) - kept
    assert m["num_tokens"] == kept and m["num_documents"] == len(documents)
    assert not (tmp_path / "ds" / "valid").exists()


def test_split_is_by_document(dataset, documents, tokenizer):
    encodings = {split: set() for split in ("train", "valid")}
    for i, doc in enumerate(documents):
        encodings[split_of(i, 0, 0.1)].add(tuple(tokenizer.encode(doc)))
    assert encodings["valid"] and encodings["train"]
    for split in ("train", "valid"):
        stream = read_split(dataset / split).reshape(-1).tolist()
        ends = [-1] + [i for i, t in enumerate(stream) if t == tokenizer.eos_id]
        whole = [tuple(stream[a + 1 : b]) for a, b in itertools.pairwise(ends)]  # complete documents
        assert whole and set(whole) <= encodings[split]


def test_manifest(dataset, tokenizer):
    for split in ("train", "valid"):
        m = load_manifest(dataset / split)
        assert (m["split"], m["seq_len"], m["sample_len"], m["dtype"]) == (
            split,
            SEQ_LEN,
            SEQ_LEN + 1,
            "uint16",
        )
        assert m["tokenizer"]["sha256"] == tokenizer.sha256 and m["tokenizer"]["vocab_size"] == 512
        assert sum(s["num_samples"] for s in m["shards"]) == m["num_samples"]
        assert all(s["num_samples"] == SAMPLES_PER_SHARD for s in m["shards"][:-1])
        for s in m["shards"]:
            assert sha256_file(dataset / split / s["file"]) == s["sha256"]
        verify_shards(dataset / split, m, "sha256")
    assert len(load_manifest(dataset / "train")["shards"]) >= 3


def test_rebuild_is_byte_identical_and_workers_agree(dataset, corpus, tokenizer_dir, tmp_path):
    write_shards([corpus], tokenizer_dir, tmp_path / "ds", SEQ_LEN, samples_per_shard=SAMPLES_PER_SHARD,
                 valid_fraction=0.1, num_workers=2, progress=False)  # fmt: skip
    for split in ("train", "valid"):
        old, new = load_manifest(dataset / split), load_manifest(tmp_path / "ds" / split)
        assert old["shards"] == new["shards"]


def test_existing_dataset_needs_overwrite(dataset, corpus, tokenizer_dir):
    with pytest.raises(DataError, match="overwrite"):
        write_shards([corpus], tokenizer_dir, dataset, SEQ_LEN, progress=False)


def _failing_encode(monkeypatch, after_calls: int):
    calls = {"n": 0}
    original = Tokenizer.encode_batch

    def encode_batch(self, texts, num_threads=1):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise RuntimeError("tokenizer crashed")
        return original(self, texts, num_threads)

    monkeypatch.setattr(Tokenizer, "encode_batch", encode_batch)


def test_failure_midway_leaves_no_dataset(corpus, tokenizer_dir, tmp_path, monkeypatch):
    _failing_encode(monkeypatch, after_calls=1)
    monkeypatch.setattr(shards_module, "_batches", lambda docs: ([d] for d in docs))  # one task per document
    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        write_shards([corpus], tokenizer_dir, tmp_path / "ds", SEQ_LEN, samples_per_shard=4, num_workers=1,
                     progress=False)  # fmt: skip
    assert list((tmp_path / "ds").iterdir()) == []  # no split, no manifest, no temporary directory


def test_failed_overwrite_keeps_the_old_dataset(dataset_copy, corpus, tokenizer_dir, monkeypatch):
    before = {s: load_manifest(dataset_copy / s) for s in ("train", "valid")}
    _failing_encode(monkeypatch, after_calls=0)
    with pytest.raises(RuntimeError):
        write_shards(
            [corpus], tokenizer_dir, dataset_copy, SEQ_LEN, overwrite=True, num_workers=1, progress=False
        )
    for split, manifest in before.items():
        assert load_manifest(dataset_copy / split) == manifest
        verify_shards(dataset_copy / split, manifest, "sha256")
    assert sorted(p.name for p in dataset_copy.iterdir()) == ["train", "valid"]


def test_bad_input_line_midway(corpus, tokenizer_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(corpus.read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:35: not a JSON object"):
        write_shards([bad], tokenizer_dir, tmp_path / "ds", SEQ_LEN, num_workers=1, progress=False)
    assert list((tmp_path / "ds").iterdir()) == []


def test_input_formats(documents, tokenizer, tokenizer_dir, tmp_path):
    """A .txt is one document; .jsonl has one per line; .gz works; a directory is searched."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text(documents[0])
    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wt") as f:
        f.write(
            json.dumps({"text": documents[1], "source": "x"}) + "\n\n" + json.dumps({"text": documents[2]})
        )
    m = write_shards([tmp_path / "in"], tokenizer_dir, tmp_path / "ds", 8, valid_fraction=0, shuffle_window=1,
                     num_workers=1, progress=False)["train"]  # fmt: skip
    assert m["num_documents"] == 3
    expected = sum(len(tokenizer.encode(d)) + 1 for d in documents[:3])
    assert m["num_tokens"] + m["dropped_tokens"] == expected


def test_unsupported_and_missing_inputs(tokenizer_dir, tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported input"):
        write_shards([tmp_path / "x.csv"], tokenizer_dir, tmp_path / "ds", 8, progress=False)
    with pytest.raises(DataError, match="not found"):
        write_shards([tmp_path / "nope.jsonl"], tokenizer_dir, tmp_path / "ds", 8, progress=False)


def test_too_little_text_for_a_sample(corpus, tokenizer_dir, tmp_path):
    with pytest.raises(DataError, match="no complete sample"):
        write_shards([corpus], tokenizer_dir, tmp_path / "ds", 10**6, valid_fraction=0, progress=False)


def test_prepare_default_skips_up_to_date_work(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "DEFAULT_CORPUS", corpus)
    kwargs = dict(vocab_size=400, seq_len=SEQ_LEN, valid_fraction=0.1, num_workers=1, progress=False)
    first = prepare_default(tmp_path / "build", **kwargs)
    assert first["tokenizer_trained"] and first["shards_written"]
    assert {p.name for p in (tmp_path / "build").iterdir()} == {"tokenizer", "train", "valid"}
    again = prepare_default(tmp_path / "build", **kwargs)
    assert not again["tokenizer_trained"] and not again["shards_written"]
    assert again["train_samples"] == first["train_samples"] > 0
    longer = prepare_default(tmp_path / "build", **{**kwargs, "seq_len": 2 * SEQ_LEN})
    assert not longer["tokenizer_trained"] and longer["shards_written"]
    assert load_manifest(tmp_path / "build" / "train")["seq_len"] == 2 * SEQ_LEN


def test_prepare_default_without_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "DEFAULT_CORPUS", tmp_path / "missing.jsonl.xz")
    with pytest.raises(DataError, match="bundled corpus not found"):
        prepare_default(tmp_path / "build", progress=False)
