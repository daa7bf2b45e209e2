"""The bundled corpus (`data/default-corpus.jsonl.xz`) → tokenizer + shards in one step (`ssa data prepare`).

    <out_dir>/tokenizer/   the BPE tokenizer trained on the corpus
    <out_dir>/train/, <out_dir>/valid/   its shards (`shards.write_shards`)

Each step is skipped when its output exists and was built from the same corpus (sha256) and settings, so a
second `ssa data prepare` costs a few checks.
"""

from __future__ import annotations

import time
from pathlib import Path

from ssa_pretrain.data.errors import DataError
from ssa_pretrain.data.manifest import load_manifest, sha256_file, verify_shards
from ssa_pretrain.data.shards import SPLITS, write_shards
from ssa_pretrain.data.tokenizer import Tokenizer, read_meta, train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]  # the package is installed editable from the repo
DEFAULT_CORPUS = REPO_ROOT / "data" / "default-corpus.jsonl.xz"
DEFAULT_BUILD_DIR = REPO_ROOT / "data" / "build" / "default"


def default_corpus() -> Path:
    """Path of the bundled corpus; raises `DataError` when this checkout lacks it."""
    if not DEFAULT_CORPUS.is_file():
        raise DataError(
            f"{DEFAULT_CORPUS}: bundled corpus not found. It ships in the git repository (data/); install "
            "ssa-pretrain editable from a checkout (`pip install -e .`), or rebuild it with "
            "tools/build_corpus.py (see data/README.md)"
        )
    return DEFAULT_CORPUS


def _shards_up_to_date(shard_dir: Path, seq_len: int, tokenizer_sha256: str, build: dict) -> bool:
    try:
        for split in SPLITS if build["valid_fraction"] > 0 else ("train",):
            manifest = load_manifest(shard_dir / split)
            recorded = manifest["build"]
            if (
                manifest["seq_len"] != seq_len
                or manifest["tokenizer"]["sha256"] != tokenizer_sha256
                or any(recorded.get(k) != v for k, v in build.items())
            ):
                return False
            verify_shards(shard_dir / split, manifest, "size")
    except DataError:
        return False
    return True


def prepare_default(
    out_dir: str | Path | None = None,  # default: <repo>/data/build/default
    vocab_size: int = 8192,
    seq_len: int = 256,
    valid_fraction: float = 0.02,  # ≈ 25 of the ~1,260 documents
    samples_per_shard: int = 1024,
    num_workers: int | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenizer + shards from the bundled corpus: `out_dir/tokenizer/`, `out_dir/train/`, `out_dir/valid/`.

    Skips each step whose output exists and was built from the same corpus and settings (unless `force`).
    Returns the paths, what was (re)built, and timings.
    """
    corpus = default_corpus()
    corpus_sha256 = sha256_file(corpus)
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_BUILD_DIR
    tok_dir, shard_dir = out_dir / "tokenizer", out_dir
    provenance = {"default_corpus": True, "corpus_sha256": corpus_sha256}
    result: dict = {
        "tokenizer": str(tok_dir),
        "train": str(shard_dir / "train"),
        "valid": str(shard_dir / "valid"),
    }

    meta = read_meta(tok_dir) if (tok_dir / "tokenizer.model").is_file() else None
    tok_fresh = (
        meta is not None
        and meta.get("vocab_size") == vocab_size
        and meta.get("training", {}).get("seed") == seed
        and meta.get("training", {}).get("provenance") == provenance
    )
    start = time.perf_counter()
    if force or not tok_fresh:
        train_tokenizer([corpus], tok_dir, vocab_size=vocab_size, seed=seed, provenance=provenance)
    result.update(
        tokenizer_trained=force or not tok_fresh, tokenizer_seconds=round(time.perf_counter() - start, 2)
    )
    tokenizer = Tokenizer(tok_dir)

    build = {"seed": seed, "valid_fraction": valid_fraction, "samples_per_shard": samples_per_shard,
             "provenance": provenance}  # fmt: skip
    start = time.perf_counter()
    stale = (
        force
        or result["tokenizer_trained"]
        or not _shards_up_to_date(shard_dir, seq_len, tokenizer.sha256, build)
    )
    if stale:
        write_shards(
            [corpus], tok_dir, shard_dir, seq_len, samples_per_shard=samples_per_shard,
            valid_fraction=valid_fraction, num_workers=num_workers, seed=seed, overwrite=True,
            progress=progress, provenance=provenance,
        )  # fmt: skip
    result.update(shards_written=stale, shards_seconds=round(time.perf_counter() - start, 2))
    for split in SPLITS:
        m = load_manifest(shard_dir / split)
        result[f"{split}_samples"], result[f"{split}_tokens"] = m["num_samples"], m["num_tokens"]
        result[f"{split}_shards"] = len(m["shards"])
    return result
