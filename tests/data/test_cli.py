"""`ssa data ...` commands: registration on a parent parser, and tokenizer → shards end to end."""

from __future__ import annotations

import argparse

from ssa_pretrain.cli import main as ssa_main
from ssa_pretrain.data.cli import add_data_commands
from ssa_pretrain.data.manifest import load_manifest


def test_add_data_commands():
    parser = argparse.ArgumentParser(prog="ssa")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["data", "shards", "a.jsonl", "--tokenizer", "t", "--out", "o", "--seq-len", "64"]
    )
    assert (args.seq_len, args.valid_fraction, args.inputs) == (64, 0.005, ["a.jsonl"]) and callable(
        args.func
    )
    args = parser.parse_args(["data", "prepare"])
    assert (args.seq_len, args.vocab_size, args.out) == (256, 8192, None)


def test_tokenizer_then_shards(corpus, tmp_path, capsys):
    tokenizer = ["data", "tokenizer", str(corpus), "--out", str(tmp_path / "tok"), "--vocab-size", "400"]
    assert ssa_main(tokenizer) == 0
    argv = ["shards", str(corpus), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "ds"),
            "--seq-len", "16", "--workers", "2", "--valid-fraction", "0.1"]  # fmt: skip
    assert ssa_main(["data", *argv]) == 0
    assert load_manifest(tmp_path / "ds" / "valid")["tokenizer"]["vocab_size"] == 400
    assert ssa_main(["data", *argv]) == 2  # exists: refused with a message, not a traceback
    assert "--overwrite" in capsys.readouterr().err
