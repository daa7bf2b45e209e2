"""Small helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_config(*overrides: str):
    """The tiny model as a run config, with dotted overrides (short sequences: CPU tests)."""
    from ssa_pretrain.config import load_config

    return load_config(
        REPO / "configs/train/tiny-cpu.yaml",
        ["data.seq_len=64", "ssa.block_size=8", "ssa.block_count=3", *overrides],
    )


def train_command(
    run_dir, nproc: int, *overrides: str, config: str = "configs/train/tiny-cpu.yaml"
) -> list[str]:
    """`python -m ssa_pretrain.train` (one process) or `torchrun` (several), as a user launches it."""
    import sys

    launcher = [sys.executable, "-m", "ssa_pretrain.train"]
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(free_port()),
            "-m",
            "ssa_pretrain.train",
        ]
    return [*launcher, config, "--run-dir", str(run_dir), *overrides]


def read_metrics(run_dir) -> list[dict]:
    """The step lines of RUN_DIR/metrics.jsonl."""
    import json

    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny_dataset(out: Path, seq_len: int = 64, vocab_size: int = 512) -> Path:
    """A small real dataset from the bundled corpus: 40 Bible chapters + 6 Python-docs pages (~300k chars),
    a `vocab_size` BPE tokenizer in `out/tokenizer`, train/valid shards of `seq_len` in `out`."""
    import json
    import lzma

    from ssa_pretrain.data.prepare import DEFAULT_CORPUS
    from ssa_pretrain.data.shards import write_shards
    from ssa_pretrain.data.tokenizer import train_tokenizer

    with lzma.open(DEFAULT_CORPUS, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    picked = [d for d in docs if d["source"].startswith("web/")][:40]
    picked += [d for d in docs if d["source"].startswith("python-docs/tutorial/")][:6]
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in picked))
    train_tokenizer([corpus], out / "tokenizer", vocab_size=vocab_size, num_threads=2)
    write_shards([corpus], out / "tokenizer", out, seq_len, samples_per_shard=256, valid_fraction=0.1,
                 num_workers=1, progress=False)  # fmt: skip
    return out
