"""Text → packed, checksummed webdataset shards (`prepare.py` runs it on the bundled corpus).

    documents ─(window shuffle, seeded)─(split by document: train / valid)─(tokenize in worker processes)
        ─ tokens + EOS per document, concatenated ─ cut into samples of seq_len + 1 tokens ─ shard-NNNNNN.tar

Layout of a dataset directory (see `manifest.py` for the manifest format):

    <out_dir>/train/shard-000000.tar ... manifest.json
    <out_dir>/valid/shard-000000.tar ... manifest.json      (absent when valid_fraction is 0)
    <out_dir>/tokenizer/                                    (only what `prepare.prepare_default` puts there)

Choices, in one place:
* Samples do not overlap: sample i is tokens [i·(seq_len+1), (i+1)·(seq_len+1)) of its split's stream, so the
  stream is exactly the concatenated `encode(doc) + [eos]`; the last, partial sample of each split is dropped.
  Documents run across sample boundaries (no padding), as in GPT pretraining.
* Validation is held out by document: document i (in input order) is in `valid` when a hash of (seed, i)
  falls below `valid_fraction`: deterministic, independent of worker count, streaming.
* Documents are shuffled within windows of `shuffle_window` documents before packing, so a shard mixes the
  sources that were concatenated in the input (the loader shuffles shards and samples, not documents).
* The splits are written under `<out_dir>/.shards.tmp-<pid>/` and renamed into place at the end: a crash or
  an error never leaves a split directory whose manifest describes partial data.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from ssa_pretrain.data.documents import expand_inputs, iter_documents
from ssa_pretrain.data.errors import DataError
from ssa_pretrain.data.manifest import FORMAT, MANIFEST_FILE, SAMPLE_FIELD, VERSION, sha256_file
from ssa_pretrain.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "valid")


# ---------------------------------------------------------------------------------------------------------
# documents → (split, text), shuffled
# ---------------------------------------------------------------------------------------------------------


def split_of(doc_index: int, seed: int, valid_fraction: float) -> str:
    """`"valid"` for a seeded-hash fraction `valid_fraction` of document indices, else `"train"`."""
    digest = hashlib.blake2b(f"{seed}:{doc_index}".encode(), digest_size=8).digest()
    return "valid" if int.from_bytes(digest, "little") / 2**64 < valid_fraction else "train"


def _shuffled(docs: Iterable[str], window: int, seed: int) -> Iterator[tuple[int, str]]:
    """(input index, text) with the order shuffled inside consecutive windows of `window` documents."""
    buf: list[tuple[int, str]] = []

    def flush(n: int) -> Iterator[tuple[int, str]]:
        order = np.random.default_rng([seed, n]).permutation(len(buf)) if window > 1 else range(len(buf))
        yield from (buf[i] for i in order)
        buf.clear()

    n_windows = 0
    for item in enumerate(docs):
        buf.append(item)
        if len(buf) >= window:
            yield from flush(n_windows)
            n_windows += 1
    yield from flush(n_windows)


def _batches(docs: Iterable[tuple[str, str]], max_chars: int = 1 << 20) -> Iterator[list[tuple[str, str]]]:
    """Group (split, text) pairs into tasks of about `max_chars` characters for the worker processes."""
    batch, chars = [], 0
    for item in docs:
        batch.append(item)
        chars += len(item[1])
        if chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------------------
# tokenization (in worker processes)
# ---------------------------------------------------------------------------------------------------------

_worker_tokenizer: Tokenizer | None = None


def _init_worker(model_path: str, sha256: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(model_path)
    if _worker_tokenizer.sha256 != sha256:
        raise DataError(f"{model_path}: tokenizer changed on disk while shards were being written")


def _encode(tokenizer: Tokenizer, texts: list[str], dtype: np.dtype) -> list[np.ndarray]:
    return [np.asarray(ids, dtype=dtype) for ids in tokenizer.encode_batch(texts)]


def _worker_encode(texts: list[str], dtype: np.dtype) -> list[np.ndarray]:
    assert _worker_tokenizer is not None
    return _encode(_worker_tokenizer, texts, dtype)


def _tokenized(
    batches: Iterable[list[tuple[str, str]]], tokenizer: Tokenizer, dtype: np.dtype, num_workers: int
) -> Iterator[tuple[str, np.ndarray]]:
    """(split, token ids) per document, in input order; `num_workers` > 1 tokenizes in worker processes.

    At most 2 tasks per worker are in flight, so memory stays bounded however large the corpus is.
    """
    if num_workers <= 1:
        for batch in batches:
            splits, texts = zip(*batch, strict=True)
            yield from zip(splits, _encode(tokenizer, list(texts), dtype), strict=True)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    initargs = (str(tokenizer.model_path), tokenizer.sha256)
    with ProcessPoolExecutor(
        num_workers, mp_context=ctx, initializer=_init_worker, initargs=initargs
    ) as pool:
        pending: deque[tuple[tuple[str, ...], Future]] = deque()
        try:
            for batch in batches:
                splits, texts = zip(*batch, strict=True)
                pending.append((splits, pool.submit(_worker_encode, list(texts), dtype)))
                if len(pending) >= 2 * num_workers:
                    splits, future = pending.popleft()
                    yield from zip(splits, future.result(), strict=True)
            while pending:
                splits, future = pending.popleft()
                yield from zip(splits, future.result(), strict=True)
        finally:
            pool.shutdown(cancel_futures=True)


# ---------------------------------------------------------------------------------------------------------
# packing and tar writing
# ---------------------------------------------------------------------------------------------------------


class _ShardWriter:
    """Writes [n, sample_len] token rows to `split_dir/shard-NNNNNN.tar`, `samples_per_shard` per shard."""

    def __init__(self, split_dir: Path, samples_per_shard: int, sample_len: int, dtype: np.dtype) -> None:
        self.split_dir, self.samples_per_shard = split_dir, samples_per_shard
        header = io.BytesIO()
        np.save(header, np.zeros(sample_len, dtype=dtype), allow_pickle=False)
        self.npy_header = header.getvalue()[: -sample_len * dtype.itemsize]  # same for every row: write once
        self.shards: list[dict] = []
        self.num_samples = 0
        self._file: io.BufferedWriter | None = None
        self._tar: wds.TarWriter | None = None
        self._in_shard = 0

    def add(self, rows: np.ndarray) -> None:
        for row in rows:
            if self._tar is None:
                self._open()
            assert self._tar is not None
            self._tar.write(
                {"__key__": f"{self.num_samples:010d}", SAMPLE_FIELD: self.npy_header + row.tobytes()}
            )
            self.num_samples += 1
            self._in_shard += 1
            if self._in_shard == self.samples_per_shard:
                self._close_shard()

    def _open(self) -> None:
        path = self.split_dir / f"shard-{len(self.shards):06d}.tar"
        self._file = path.open("wb")  # closed in _close_shard
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0)  # mtime=0: byte-reproducible shards
        self.shards.append({"file": path.name, "num_samples": 0})
        self._in_shard = 0

    def _close_shard(self) -> None:
        assert self._tar is not None and self._file is not None
        self._tar.close()
        self._file.close()
        path = self.split_dir / self.shards[-1]["file"]
        self.shards[-1].update(
            num_samples=self._in_shard, bytes=path.stat().st_size, sha256=sha256_file(path)
        )
        self._tar = self._file = None

    def close(self) -> list[dict]:
        if self._tar is not None:
            self._close_shard()
        return self.shards


class _Packer:
    """Concatenates documents (each followed by EOS) and cuts the stream into rows of `sample_len` tokens."""

    def __init__(self, writer: _ShardWriter, sample_len: int, eos_id: int, dtype: np.dtype) -> None:
        self.writer, self.sample_len = writer, sample_len
        self.eos = np.array([eos_id], dtype=dtype)
        self.carry = np.zeros(0, dtype=dtype)
        self.num_documents = 0

    def add(self, tokens: np.ndarray) -> None:
        stream = np.concatenate([self.carry, tokens, self.eos])
        n = len(stream) // self.sample_len
        if n:
            self.writer.add(stream[: n * self.sample_len].reshape(n, self.sample_len))
        self.carry = stream[n * self.sample_len :]
        self.num_documents += 1


# ---------------------------------------------------------------------------------------------------------
# the public entry points
# ---------------------------------------------------------------------------------------------------------


def write_shards(
    inputs: Sequence[str | Path],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    seq_len: int,
    samples_per_shard: int = 1024,  # seq_len 8192 → 1024 × 8193 × 2 B ≈ 17 MB per shard
    valid_fraction: float = 0.005,
    num_workers: int | None = None,  # default: all cores; ≤ 1 tokenizes in this process
    seed: int = 0,
    shuffle_window: int = 10_000,  # documents held in memory for the pre-packing shuffle; 1 disables it
    overwrite: bool = False,
    progress: bool = True,
    provenance: dict | None = None,
) -> dict[str, dict]:
    """Tokenize `inputs`, write packed train/valid shards plus manifests to `out_dir`; return the manifests.

    Each sample is `seq_len + 1` tokens (the model reads s[:-1] and predicts s[1:]). `provenance`
    (JSON-serialisable) is recorded in each manifest under `build`. Raises `DataError` for bad inputs, for an
    empty split, and when `out_dir` already holds `train/` or `valid/` and `overwrite` is False.
    """
    out_dir = Path(out_dir)
    files = expand_inputs(inputs)
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    if seq_len < 1 or samples_per_shard < 1 or shuffle_window < 1:
        raise ValueError("seq_len, samples_per_shard and shuffle_window must be positive")
    existing = [out_dir / split for split in SPLITS if (out_dir / split).exists()]
    if existing and not overwrite:
        raise DataError(f"{existing[0]}: already exists; pass overwrite=True (`--overwrite`) to replace it")
    tokenizer = Tokenizer(tokenizer_dir)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    sample_len = seq_len + 1
    num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers

    tmp_dir = out_dir / f".shards.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    splits = ("train", "valid") if valid_fraction > 0 else ("train",)
    start = time.perf_counter()
    try:
        packers = {}
        for split in splits:
            (tmp_dir / split).mkdir(parents=True)
            writer = _ShardWriter(tmp_dir / split, samples_per_shard, sample_len, dtype)
            packers[split] = _Packer(writer, sample_len, tokenizer.eos_id, dtype)
        docs = (
            (split_of(i, seed, valid_fraction), text)
            for i, text in _shuffled(iter_documents(files), shuffle_window, seed)
        )
        bar = tqdm(desc=f"tokenizing → {out_dir.name}", unit="tok", unit_scale=True, disable=not progress)
        with bar:
            for split, tokens in _tokenized(_batches(docs), tokenizer, dtype, num_workers):
                packers[split].add(tokens)
                bar.update(len(tokens) + 1)
        seconds = time.perf_counter() - start
        build = {
            "inputs": [str(f) for f in files],
            "tokenizer_dir": str(Path(tokenizer_dir)),
            "seed": seed,
            "valid_fraction": valid_fraction,
            "samples_per_shard": samples_per_shard,
            "shuffle_window": shuffle_window,
            "seconds": round(seconds, 2),
            **({"provenance": provenance} if provenance else {}),
        }
        manifests = {}
        for split, packer in packers.items():
            manifests[split] = _finish_split(split, packer, tokenizer, seq_len, build, files)
            (tmp_dir / split / MANIFEST_FILE).write_text(json.dumps(manifests[split], indent=2) + "\n")
        _install(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    total = sum(m["num_tokens"] for m in manifests.values())
    summary = ", ".join(
        f"{s} {m['num_samples']} samples / {len(m['shards'])} shards" for s, m in manifests.items()
    )
    log.info("wrote %s: %s (%.1f s, %.2fM tokens/s)", out_dir, summary, seconds, total / seconds / 1e6)
    return manifests


def _finish_split(
    split: str, packer: _Packer, tokenizer: Tokenizer, seq_len: int, build: dict, files: list[Path]
) -> dict:
    """Close the split's last shard and return its manifest (see manifest.py for the format)."""
    shards = packer.writer.close()
    num_samples, sample_len = packer.writer.num_samples, seq_len + 1
    if num_samples == 0:
        fix = "lower --seq-len or add text" if split == "train" else "raise --valid-fraction or pass 0"
        raise DataError(
            f"{', '.join(map(str, files))}: the {split} split got {packer.num_documents} documents and no "
            f"complete sample of {sample_len} tokens; {fix}"
        )
    return {
        "format": FORMAT, "version": VERSION, "split": split,
        "seq_len": seq_len, "sample_len": sample_len, "dtype": packer.eos.dtype.name,
        "tokenizer": {
            "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
        },
        "num_samples": num_samples, "num_tokens": num_samples * sample_len,
        "num_documents": packer.num_documents, "dropped_tokens": len(packer.carry),
        "shards": shards,
        "build": build,
    }  # fmt: skip


def _install(tmp_dir: Path, out_dir: Path) -> None:
    """Move the finished splits from `tmp_dir` into `out_dir`, replacing old ones, by renames only.

    All old splits leave first, so a crash in between leaves a split missing (a clear error), never a split
    that is partial or a train/valid pair from two different builds.
    """
    old = out_dir / f".shards.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)  # left by a killed run that had our pid
    old.mkdir()
    for split in SPLITS:
        if (out_dir / split).exists():
            (out_dir / split).rename(old / split)
    for split in SPLITS:
        if (tmp_dir / split).exists():
            (tmp_dir / split).rename(out_dir / split)
    shutil.rmtree(old)
