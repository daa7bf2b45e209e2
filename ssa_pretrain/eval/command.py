"""The skeleton every `ssa eval` command runs: check → output dir → load → modes → report → publish.

A command supplies its options (`options.py`), what it measures (`measure(model, tokenizer, hf_dir,
options)`: the command's modes and its part of the report) and how the report reads (`markdown`) and looks
(`plot`); the skeleton adds what every report says: the model, the dtype, the device and the seconds the
measurement took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ssa_pretrain.eval.export import load_model
from ssa_pretrain.eval.options import CommandOptions, LoadOptions
from ssa_pretrain.eval.output import OutputDir

Measure = Callable[[torch.nn.Module, Any, Path, Any], dict]
"""`measure(model, tokenizer, hf_dir, options) -> dict`: the command's part of the report."""


def run_evaluation(
    name: str,
    hf_dir: str | Path,
    out: str | Path,
    options: CommandOptions,
    overwrite: bool,
    load: LoadOptions,
    measure: Measure,
    markdown: Callable[[dict], str],
    plot: Callable[[dict, Path], None],
) -> dict:
    """Run one evaluation and write `NAME.json/md/png` into `out`; returns the report.

    Bad input raises `EvalError` before anything is written: the options first (no model needed), then `out`
    (see `OutputDir`), then the export itself and what `measure` finds wrong with the model's inputs.
    """
    options.check()
    load.check()
    output = OutputDir(out, overwrite)
    model, tokenizer = load_model(hf_dir, load)
    start = time.time()
    report = {"model": str(hf_dir), **measure(model, tokenizer, Path(hf_dir), options)}
    report |= {"dtype": load.dtype, "device": str(model.device), "seconds": round(time.time() - start, 2)}
    output.publish(name, report, markdown, plot)
    return report
