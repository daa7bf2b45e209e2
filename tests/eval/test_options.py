"""`ssa eval`'s options: the command line takes every default from the options classes, and an option no
model could make right exits 2 before the output directory or the model is touched (no model needed)."""

from __future__ import annotations

import dataclasses

import pytest

from ssa_pretrain import cli
from ssa_pretrain.eval.cli import COMMANDS, parsed
from ssa_pretrain.eval.options import LoadOptions


@pytest.mark.parametrize("name", COMMANDS)
def test_the_command_line_takes_every_default_from_the_options(name) -> None:
    options = COMMANDS[name][0]
    required = {f.name: "x" for f in dataclasses.fields(options) if f.default is dataclasses.MISSING}
    argv = ["eval", name, "hf", "--out", "out", *(a for k, v in required.items() for a in (f"--{k}", v))]
    args = cli.build_parser().parse_args(argv)
    assert parsed(args, options) == options(**required)
    assert parsed(args, LoadOptions) == LoadOptions()


BAD = [
    ("ppl", ["--windows", "0"], "--windows must be >= 1, got 0"),
    ("ppl", ["--lengths", "64", "0"], "--lengths needs positive integers, got [64, 0]"),
    ("sparsity", ["--block-count", "0"], "--block-count must be >= 1, got 0"),
    ("niah", ["--depths", "0.5", "2"], "--depths must lie in [0, 1], got [0.5, 2.0]"),
    ("niah", ["--trials", "0"], "--trials must be >= 1"),
    ("elastic", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ("niah", ["--rope-factor", "4"], "--rope-factor needs --rope-scaling TYPE"),
    ("niah", ["--rope-scaling", "llama3"], "--rope-scaling llama3 needs --rope-factor > 1"),
]


@pytest.mark.parametrize(("name", "flags", "message"), BAD, ids=[" ".join([n, *f]) for n, f, _ in BAD])
def test_a_bad_option_exits_2_before_anything_is_loaded_or_written(name, flags, message, tmp_path, capsys):
    data = ["--data", str(tmp_path)] if name in ("ppl", "sparsity") else []
    out = tmp_path / "out"
    argv = ["eval", name, str(tmp_path / "no-model"), "--out", str(out), *data, *flags]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not out.exists()
