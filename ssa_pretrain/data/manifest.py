"""The shard manifest: its format, reading it, and checking shards and tokenizer against it.

One `manifest.json` per split directory (`<dataset>/train/`, `<dataset>/valid/`), self-contained so a loader
needs only the split directory:

    {
      "format": "ssa-pretrain-shards", "version": 1, "split": "train",
      "seq_len": 256,                 # a sample holds seq_len + 1 tokens: inputs = s[:-1], labels = s[1:]
      "sample_len": 257,
      "dtype": "uint16",              # uint32 when the vocabulary has more than 65,536 entries
      "tokenizer": {"sha256": "...", "vocab_size": 8192, "bos_id": 1, "eos_id": 2, "pad_id": 3},
      "num_samples": 5120, "num_tokens": 1315840, "num_documents": 1234, "dropped_tokens": 100,
      "shards": [{"file": "shard-000000.tar", "num_samples": 1024, "bytes": 1607680, "sha256": "..."}, ...],
      "build": {"inputs": [...], "seed": 0, "valid_fraction": 0.01, "samples_per_shard": 1024, ...}
    }

Each shard is a webdataset tar: per sample one member `<key>.tokens.npy` (a 1-D `dtype` array of `sample_len`
tokens, `np.save` format, loaded with `allow_pickle=False`); keys are the sample's index in the split.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Literal

from ssa_pretrain.data.errors import DataError, missing_data_hint

FORMAT = "ssa-pretrain-shards"
VERSION = 1
MANIFEST_FILE = "manifest.json"
SAMPLE_FIELD = "tokens.npy"
Verify = Literal["size", "sha256"]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def rebuild_hint(manifest: dict | None = None) -> str:
    """How to rebuild a dataset, filled in from the manifest's build record when there is one."""
    build = (manifest or {}).get("build", {})
    if build.get("provenance", {}).get("default_corpus"):
        return "rebuild it with `ssa data prepare --force`"
    inputs = " ".join(build.get("inputs", [])) or "<inputs>"
    tok = build.get("tokenizer_dir", "<tokenizer dir>")
    seq_len = (manifest or {}).get("seq_len", "<seq len>")
    return f"rebuild it with `ssa data shards {inputs} --tokenizer {tok} --out <dataset> --seq-len {seq_len}`"


def load_manifest(split_dir: str | Path) -> dict:
    """Read and sanity-check `split_dir/manifest.json`; raises `DataError` naming the file."""
    path = Path(split_dir) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: no manifest, so {split_dir} is not a (complete) shard directory; "
            f"{missing_data_hint(split_dir)}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); {rebuild_hint()}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not an {FORMAT} manifest; {rebuild_hint()}")
    if manifest.get("version") != VERSION:
        raise DataError(
            f"{path}: manifest version {manifest.get('version')}, this code reads {VERSION}; {rebuild_hint()}"
        )
    missing = {"seq_len", "sample_len", "dtype", "tokenizer", "num_samples", "shards"} - manifest.keys()
    if missing:
        raise DataError(f"{path}: manifest lacks {sorted(missing)}; {rebuild_hint(manifest)}")
    for shard in manifest["shards"]:
        name = PurePosixPath(str(shard.get("file", "")))
        if not name.parts or name.is_absolute() or ".." in name.parts or "\\" in str(name):
            raise DataError(
                f"{path}: shard path {str(name)!r} leaves the dataset directory {split_dir} (shards are "
                f"named relative to it, e.g. shard-000000.tar); {rebuild_hint(manifest)}"
            )
    return manifest


def manifest_digest(manifest: dict) -> str:
    """Hex sha256 of what fixes a split's sample stream: seq_len and the shards in order (names, sample
    counts, sha256s). A checkpoint records it, so a run resumes on the same samples."""
    shards = [[s["file"], s["num_samples"], s["sha256"]] for s in manifest["shards"]]
    return hashlib.sha256(json.dumps([manifest["seq_len"], shards]).encode()).hexdigest()


def check_compatible(
    split_dir: str | Path, manifest: dict, seq_len: int, tokenizer_sha256: str | None = None
) -> None:
    """Raise `DataError` when the shards were built for another seq_len or another tokenizer."""
    path = Path(split_dir) / MANIFEST_FILE
    if manifest["seq_len"] != seq_len:
        raise DataError(
            f"{path}: shards hold samples for seq_len {manifest['seq_len']} but the run asks for seq_len "
            f"{seq_len}; "
            f"set seq_len {manifest['seq_len']} or {rebuild_hint({**manifest, 'seq_len': seq_len})}"
        )
    built_with = manifest["tokenizer"]["sha256"]
    if tokenizer_sha256 is not None and built_with != tokenizer_sha256:
        raise DataError(
            f"{path}: shards were tokenized with tokenizer sha256 {built_with[:12]}… "
            f"(vocab {manifest['tokenizer']['vocab_size']}) but the run's tokenizer is "
            f"{tokenizer_sha256[:12]}…; "
            f"point the run at the tokenizer the shards were built with, or {rebuild_hint(manifest)} "
            "using the run's tokenizer"
        )


def verify_shards(split_dir: str | Path, manifest: dict, verify: Verify = "size") -> None:
    """Check every shard in the manifest exists and has its recorded size (`"size"`) or also its sha256.

    `"size"` costs one `stat` per shard and catches missing and truncated shards; `"sha256"` reads every byte
    and also catches flipped bytes. The loader hashes each shard again whenever it reads it, so `"size"` is
    enough to start a run and corruption still never reaches the model.
    """
    split_dir = Path(split_dir)
    if verify not in ("size", "sha256"):
        raise ValueError(f"verify must be 'size' or 'sha256', got {verify!r}")
    for shard in manifest["shards"]:
        path = split_dir / shard["file"]
        if not path.is_file():
            raise DataError(f"{path}: shard listed in {MANIFEST_FILE} is missing; {rebuild_hint(manifest)}")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise DataError(
                f"{path}: shard is {size} bytes but {MANIFEST_FILE} says {shard['bytes']} (truncated or "
                f"overwritten); {rebuild_hint(manifest)}"
            )
        if verify == "sha256" and sha256_file(path) != shard["sha256"]:
            raise DataError(
                f"{path}: shard sha256 does not match {MANIFEST_FILE} (corrupt); {rebuild_hint(manifest)}"
            )
