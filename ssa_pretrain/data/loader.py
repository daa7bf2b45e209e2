"""Shards → micro-batches: an endless, resumable, data-parallel training loader; a finite validation iterator.

The training stream, epoch e (a pure function of (seed, e), so it needs no saved RNG state):

    shards   in the order  rng(seed, e).permutation(num_shards)
    samples  of shard s in the order  rng(seed, e, s).permutation(num_samples_of_s)
    → one global sample stream; consecutive groups of micro_batch_size samples are the global micro-batches;
      rank r of dp_size takes micro-batches r, r + dp_size, r + 2·dp_size, ...

So at every step the dp_size ranks together consume a contiguous slice of micro_batch_size · dp_size samples
of the stream, the ranks' shares are disjoint, and every rank gets the same number of micro-batches per epoch
(`batches_per_epoch` = num_samples // (micro_batch_size · dp_size); the remainder of an epoch is skipped).
Resuming needs only (epoch, micro-batches consumed): the position of the next sample in the stream is
computed from the manifest's per-shard counts, and the shard holding it is opened directly.

Integrity: at construction every shard must exist with its manifest size (`verify="size"`, a stat per shard)
or also its sha256 (`verify="sha256"`, reads all data); in addition every shard is hashed each time it is
read, so a corrupt shard raises `DataError` before any of its tokens reach the model. Every rank reads every
shard (the page cache shares them between the ranks of a node); a shard is decoded whole, one in memory at a
time.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from webdataset.tariterators import tar_file_iterator

from ssa_pretrain.data.errors import DataError
from ssa_pretrain.data.manifest import (
    MANIFEST_FILE,
    SAMPLE_FIELD,
    Verify,
    check_compatible,
    load_manifest,
    rebuild_hint,
    verify_shards,
)

STATE_VERSION = 1


class _Split:
    """One split directory: its manifest (checked at construction) and verified reads of whole shards."""

    def __init__(
        self, shard_dir: str | Path, seq_len: int, tokenizer_sha256: str | None, verify: Verify
    ) -> None:
        self.dir = Path(shard_dir)
        self.manifest = load_manifest(self.dir)
        check_compatible(self.dir, self.manifest, seq_len, tokenizer_sha256)
        verify_shards(self.dir, self.manifest, verify)
        self.shards: list[dict] = self.manifest["shards"]
        self.counts = np.array([s["num_samples"] for s in self.shards], dtype=np.int64)
        self.num_samples = int(self.counts.sum())
        if self.num_samples != self.manifest["num_samples"]:
            raise DataError(
                f"{self.dir / MANIFEST_FILE}: shard counts do not add up; {rebuild_hint(self.manifest)}"
            )
        self.sample_len: int = self.manifest["sample_len"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self._cached: tuple[int, np.ndarray] | None = None

    def shard(self, i: int) -> np.ndarray:
        """All samples of shard `i`, `[num_samples, sample_len]`, in file order (the last read is cached)."""
        if self._cached is None or self._cached[0] != i:
            self._cached = (i, self._read(i))
        return self._cached[1]

    def _read(self, i: int) -> np.ndarray:
        entry, path = self.shards[i], self.dir / self.shards[i]["file"]
        fix = rebuild_hint(self.manifest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path}: shard listed in {MANIFEST_FILE} is missing; {fix}") from None
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise DataError(f"{path}: shard size or sha256 does not match {MANIFEST_FILE} (corrupt); {fix}")
        rows = []
        try:
            for member in tar_file_iterator(io.BytesIO(data)):
                if not member["fname"].endswith("." + SAMPLE_FIELD):
                    raise ValueError(f"unexpected member {member['fname']}")
                rows.append(np.load(io.BytesIO(member["data"]), allow_pickle=False))
        except (tarfile.TarError, ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: unreadable shard ({e}); {fix}") from e
        if len(rows) != entry["num_samples"] or any(
            r.shape != (self.sample_len,) or r.dtype != self.dtype for r in rows
        ):
            raise DataError(
                f"{path}: shard does not hold {entry['num_samples']} samples of {self.sample_len} "
                f"{self.dtype} tokens as {MANIFEST_FILE} says; {fix}"
            )
        array = np.stack(rows)
        if array.size and int(array.max()) >= self.manifest["tokenizer"]["vocab_size"]:
            raise DataError(f"{path}: token id beyond the vocabulary; {fix}")
        return array


class ShardLoader:
    """Endless training micro-batches `LongTensor [micro_batch_size, seq_len + 1]` for one data-parallel rank.

    `shard_dir` is one split directory (holding `manifest.json`). `tokenizer_sha256` (e.g. `Tokenizer.sha256`)
    makes construction fail when the shards were built with another tokenizer. See the module docstring for
    the order of the stream and how ranks share it.
    """

    def __init__(
        self,
        shard_dir: str | Path,
        seq_len: int,
        micro_batch_size: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        tokenizer_sha256: str | None = None,
        verify: Verify = "size",
    ) -> None:
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank must be in [0, dp_size={dp_size}), got {dp_rank}")
        if micro_batch_size < 1 or seed < 0:
            raise ValueError("micro_batch_size must be positive and seed non-negative")
        self.split = _Split(shard_dir, seq_len, tokenizer_sha256, verify)
        self.micro_batch_size, self.dp_rank, self.dp_size, self.seed = (
            micro_batch_size,
            dp_rank,
            dp_size,
            seed,
        )
        self.batches_per_epoch = self.split.num_samples // (micro_batch_size * dp_size)
        if self.batches_per_epoch == 0:
            raise DataError(
                f"{self.split.dir}: {self.split.num_samples} samples are fewer than one global micro-batch "
                f"(micro_batch_size {micro_batch_size} × dp_size {dp_size}); use more data or smaller batches"
            )
        self.epoch, self.consumed = 0, 0  # consumed: micro-batches this rank took in `epoch`
        self._order: tuple[int, np.ndarray, np.ndarray] | None = None  # caches: the epoch's shard order ...
        self._within: tuple[tuple[int, int], np.ndarray] | None = (
            None  # ... and the current shard's sample order
        )

    def _epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard permutation, start of each permuted shard in the epoch's sample stream)."""
        if self._order is None or self._order[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.split.shards))
            starts = np.concatenate([[0], np.cumsum(self.split.counts[perm])])
            self._order = (epoch, perm, starts)
        return self._order[1], self._order[2]

    def _sample(self, epoch: int, position: int) -> np.ndarray:
        perm, starts = self._epoch_order(epoch)
        k = int(np.searchsorted(starts, position, side="right")) - 1  # which shard (in epoch order) ...
        shard = int(perm[k])
        if self._within is None or self._within[0] != (epoch, shard):
            n = int(self.split.counts[shard])
            self._within = ((epoch, shard), np.random.default_rng([self.seed, epoch, shard]).permutation(n))
        return self.split.shard(shard)[self._within[1][position - starts[k]]]  # ... and which sample in it

    def __iter__(self) -> ShardLoader:
        return self

    def __next__(self) -> torch.Tensor:
        if self.consumed == self.batches_per_epoch:
            self.epoch, self.consumed = self.epoch + 1, 0
        first = (
            self.consumed * self.dp_size + self.dp_rank
        ) * self.micro_batch_size  # global micro-batch index
        rows = np.stack([self._sample(self.epoch, p) for p in range(first, first + self.micro_batch_size)])
        self.consumed += 1
        return torch.from_numpy(rows.astype(np.int64))  # [micro_batch_size, seq_len + 1]

    def state_dict(self) -> dict:
        """Position of this rank (the same on every rank: ranks move in lockstep) plus what it depends on."""
        return {
            "version": STATE_VERSION, "epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
            "dp_size": self.dp_size, "micro_batch_size": self.micro_batch_size,
            "num_samples": self.split.num_samples,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue after the last micro-batch the saved loader returned (no replay, no re-reading)."""
        for key in ("dp_size", "micro_batch_size", "seed"):
            if state[key] != getattr(self, key):
                raise DataError(
                    f"data loader state was saved with {key}={state[key]} but this loader has {key}="
                    f"{getattr(self, key)}; the sample order depends on it, so resume with the same {key}"
                )
        if state["num_samples"] != self.split.num_samples:
            raise DataError(
                f"{self.split.dir / MANIFEST_FILE}: the loader state was saved on a dataset of "
                f"{state['num_samples']} samples, this one has {self.split.num_samples}; resume on the "
                "dataset the run started with"
            )
        if not 0 <= state["consumed"] <= self.batches_per_epoch:
            raise DataError(
                f"loader state consumed={state['consumed']} is outside [0, {self.batches_per_epoch}]"
            )
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])


def iter_validation(
    shard_dir: str | Path,
    seq_len: int,
    micro_batch_size: int,
    num_batches: int | None = None,
    dp_rank: int = 0,
    dp_size: int = 1,
    tokenizer_sha256: str | None = None,
    verify: Verify = "size",
) -> Iterator[torch.Tensor]:
    """Finite validation micro-batches `LongTensor [micro_batch_size, seq_len + 1]` in a fixed order.

    The stream is the samples in manifest order (shards as listed, samples as stored), cut into micro-batches;
    rank r takes micro-batches r, r + dp_size, ...; every rank yields the same count:
    min(num_batches, num_samples // (micro_batch_size · dp_size)) (all of them when num_batches is None).
    Checks run now; the batches are read lazily.
    """
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank must be in [0, dp_size={dp_size}), got {dp_rank}")
    split = _Split(shard_dir, seq_len, tokenizer_sha256, verify)
    available = split.num_samples // (micro_batch_size * dp_size)
    if available == 0:
        raise DataError(
            f"{split.dir}: {split.num_samples} samples are fewer than one global micro-batch "
            f"({micro_batch_size} × {dp_size}); use a larger validation split or smaller batches"
        )
    count = available if num_batches is None else min(num_batches, available)
    starts = np.concatenate([[0], np.cumsum(split.counts)])

    def batches() -> Iterator[torch.Tensor]:
        for b in range(count):
            first = (b * dp_size + dp_rank) * micro_batch_size
            rows = []
            for p in range(first, first + micro_batch_size):
                k = int(np.searchsorted(starts, p, side="right")) - 1
                rows.append(split.shard(k)[p - starts[k]])
            yield torch.from_numpy(np.stack(rows).astype(np.int64))

    return batches()
