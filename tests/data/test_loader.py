"""The training loader and validation iterator: order, data-parallel shares, resume, integrity errors."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from ssa_pretrain.data import DataError, ShardLoader, iter_validation
from ssa_pretrain.data.manifest import load_manifest, sha256_file

from .conftest import SEQ_LEN, read_split


def take(loader, n: int) -> list[torch.Tensor]:
    return list(itertools.islice(loader, n))


def rows_of(batches) -> list[tuple[int, ...]]:
    return [tuple(row.tolist()) for batch in batches for row in batch]


def test_batches(dataset):
    loader = ShardLoader(dataset / "train", SEQ_LEN, micro_batch_size=4)
    batch = next(loader)
    assert batch.shape == (4, SEQ_LEN + 1) and batch.dtype == torch.long
    stored = set(map(tuple, read_split(dataset / "train").tolist()))
    assert set(rows_of(take(loader, 20))) <= stored


def test_an_epoch_is_a_permutation_and_order_depends_on_seed_and_epoch(dataset):
    num_samples = load_manifest(dataset / "train")["num_samples"]
    loader = ShardLoader(dataset / "train", SEQ_LEN, micro_batch_size=1, seed=5)
    assert loader.batches_per_epoch == num_samples
    epoch0, epoch1 = rows_of(take(loader, num_samples)), rows_of(take(loader, num_samples))
    assert sorted(epoch0) == sorted(epoch1) == sorted(map(tuple, read_split(dataset / "train").tolist()))
    assert epoch0 != epoch1  # a new order each epoch
    assert (
        rows_of(take(ShardLoader(dataset / "train", SEQ_LEN, 1, seed=5), num_samples)) == epoch0
    )  # reproducible
    assert rows_of(take(ShardLoader(dataset / "train", SEQ_LEN, 1, seed=6), num_samples)) != epoch0


@pytest.mark.parametrize("dp_size", [2, 3])
def test_data_parallel_ranks_are_disjoint_and_cover_the_stream(dataset, dp_size):
    mbs = 2
    single = ShardLoader(dataset / "train", SEQ_LEN, mbs, seed=1)
    ranks = [ShardLoader(dataset / "train", SEQ_LEN, mbs, rank, dp_size, seed=1) for rank in range(dp_size)]
    per_rank = ranks[0].batches_per_epoch
    assert all(r.batches_per_epoch == per_rank for r in ranks)
    shares = [take(r, per_rank) for r in ranks]
    stream = take(single, per_rank * dp_size)  # the global micro-batch stream
    for step in range(per_rank):
        for rank in range(dp_size):  # rank r takes global micro-batches r, r + dp, ...
            assert torch.equal(shares[rank][step], stream[step * dp_size + rank])
    flat = [rows_of(s) for s in shares]
    assert sum(map(len, flat)) == len(set(itertools.chain(*flat)))  # disjoint (all packed rows are distinct)


@pytest.mark.parametrize("consumed", [0, 5, "end_of_epoch"])
def test_resume_continues_with_the_next_unseen_batch(dataset, consumed):
    reference = ShardLoader(dataset / "train", SEQ_LEN, 3, dp_rank=1, dp_size=2, seed=7)
    n = reference.batches_per_epoch - 1 if consumed == "end_of_epoch" else consumed
    expected = take(reference, n + 4)  # runs over the epoch boundary in the last case
    interrupted = ShardLoader(dataset / "train", SEQ_LEN, 3, dp_rank=1, dp_size=2, seed=7)
    take(interrupted, n)
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a checkpoint round trip
    resumed = ShardLoader(dataset / "train", SEQ_LEN, 3, dp_rank=1, dp_size=2, seed=7)
    resumed.load_state_dict(state)
    for want, got in zip(expected[n:], take(resumed, 4), strict=True):
        assert torch.equal(want, got)


def test_resume_with_other_settings_is_refused(dataset):
    state = ShardLoader(dataset / "train", SEQ_LEN, 2, 0, 2).state_dict()
    with pytest.raises(ValueError, match="dp_size=2"):
        ShardLoader(dataset / "train", SEQ_LEN, 2, 0, 4).load_state_dict(state)
    with pytest.raises(DataError, match="dataset of"):
        ShardLoader(dataset / "train", SEQ_LEN, 2, 0, 2).load_state_dict({**state, "num_samples": 1})


def _first_shard(split_dir):
    return split_dir / load_manifest(split_dir)["shards"][0]["file"]


def test_truncated_shard(dataset_copy):
    path = _first_shard(dataset_copy / "train")
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(DataError, match=rf"{path}: shard is \d+ bytes .*ssa data shards"):
        ShardLoader(dataset_copy / "train", SEQ_LEN, 2)


def test_flipped_bytes(dataset_copy):
    path = _first_shard(dataset_copy / "train")
    data = bytearray(path.read_bytes())
    data[512 + 128 + 10] ^= (
        0xFF  # first sample's tokens (after the tar and npy headers): the tar still parses
    )
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{path}: shard sha256 does not match"):
        ShardLoader(dataset_copy / "train", SEQ_LEN, 2, verify="sha256")
    loader = ShardLoader(dataset_copy / "train", SEQ_LEN, 2)  # size check only: caught when the shard is read
    with pytest.raises(DataError, match=rf"{path}: shard size or sha256 does not match .*\(corrupt\)"):
        take(loader, loader.batches_per_epoch)


def test_unreadable_shard_with_matching_manifest(dataset_copy):
    split = dataset_copy / "train"
    path, manifest = _first_shard(split), load_manifest(split)
    path.write_bytes(path.read_bytes()[:700])  # cut inside the first member, and make the manifest agree
    manifest["shards"][0].update(bytes=700, sha256=sha256_file(path))
    (split / "manifest.json").write_text(json.dumps(manifest))
    loader = ShardLoader(split, SEQ_LEN, 2, verify="sha256")
    with pytest.raises(DataError, match=rf"{path}: unreadable shard"):
        take(loader, loader.batches_per_epoch)


def test_missing_shard_and_manifest(dataset_copy):
    path = _first_shard(dataset_copy / "valid")
    path.unlink()
    with pytest.raises(DataError, match=rf"{path}: shard listed in manifest.json is missing"):
        iter_validation(dataset_copy / "valid", SEQ_LEN, 2)
    (dataset_copy / "train" / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest"):
        ShardLoader(dataset_copy / "train", SEQ_LEN, 2)


def test_tokenizer_mismatch(dataset, tokenizer):
    ShardLoader(dataset / "train", SEQ_LEN, 2, tokenizer_sha256=tokenizer.sha256)
    with pytest.raises(
        DataError, match=r"manifest.json: shards were tokenized with tokenizer sha256 .* run's"
    ):
        ShardLoader(dataset / "train", SEQ_LEN, 2, tokenizer_sha256="f" * 64)


def test_seq_len_mismatch(dataset):
    with pytest.raises(DataError, match=rf"seq_len {SEQ_LEN} but the run asks for seq_len 64.*--seq-len 64"):
        ShardLoader(dataset / "train", 64, 2)


def test_batch_larger_than_dataset(dataset):
    with pytest.raises(DataError, match="fewer than one global micro-batch"):
        ShardLoader(dataset / "valid", SEQ_LEN, 10**6)


def test_validation_order_and_ranks(dataset):
    valid = read_split(dataset / "valid")
    mbs = 2
    everything = list(iter_validation(dataset / "valid", SEQ_LEN, mbs))
    assert len(everything) == len(valid) // mbs
    np.testing.assert_array_equal(
        torch.cat(everything).numpy(), valid[: len(everything) * mbs]
    )  # stored order
    assert all(
        torch.equal(a, b)
        for a, b in zip(everything, iter_validation(dataset / "valid", SEQ_LEN, mbs), strict=True)
    )
    shares = [list(iter_validation(dataset / "valid", SEQ_LEN, mbs, 3, rank, 2)) for rank in range(2)]
    assert [len(s) for s in shares] == [3, 3]
    for step in range(3):
        for rank in range(2):
            assert torch.equal(shares[rank][step], everything[step * 2 + rank])
