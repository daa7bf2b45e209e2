"""`ssa eval ppl`: perplexity at several context lengths, full vs sparse, and over sparse budgets.

Every length scores the same tokens: the first `--windows × max(--lengths)` tokens of the evaluation stream
(fewer when the data holds fewer) are cut into windows of each length `L`, each window starting where the
previous one's inputs end; the model reads `L` tokens and is scored on the next token at every position, as
in training. Per length: full attention, and sparse attention at the export's `block_count` and at every
`--block-counts` budget (the budget curve; a budget of at least `ceil(L / block_size)` blocks selects every
block, which is full attention exactly).

Files: `ppl.json` (every measurement), `ppl.md` (tables), `ppl.png` (ppl vs length, full and sparse; ppl vs
block_count per length, full attention dashed).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ssa_pretrain.eval.command import run_evaluation
from ssa_pretrain.eval.errors import EvalError
from ssa_pretrain.eval.export import set_mode
from ssa_pretrain.eval.options import DEFAULT_LOAD, LoadOptions, PplOptions, positive_ints
from ssa_pretrain.eval.output import markdown_table, pyplot
from ssa_pretrain.eval.tokens import load_tokens, token_windows

log = logging.getLogger(__name__)

LOGIT_CHUNK = 1024
"""Positions whose logits are made at once (`[B, chunk, vocab]` fp32: 0.5 GB a window at 128K vocab)."""


@torch.no_grad()
def summed_nll(model: torch.nn.Module, windows: torch.Tensor, batch_size: int) -> float:
    """Summed next-token NLL (nats) of `windows [N, L + 1]`: inputs `[:, :-1]`, labels `[:, 1:]`."""
    total = 0.0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start : start + batch_size].to(model.device)
        inputs, labels = batch[:, :-1], batch[:, 1:]  # [B, L]
        hidden = model.model(input_ids=inputs, use_cache=False).last_hidden_state  # [B, L, hidden]
        for c in range(0, inputs.shape[1], LOGIT_CHUNK):
            logits = model.lm_head(hidden[:, c : c + LOGIT_CHUNK]).float()  # [B, chunk, vocab]
            total += F.cross_entropy(
                logits.flatten(0, 1), labels[:, c : c + LOGIT_CHUNK].flatten(), reduction="sum"
            ).item()
    return total


def evaluate_ppl(
    hf_dir: str | Path,
    out: str | Path,
    options: PplOptions,
    *,
    overwrite: bool = False,
    load: LoadOptions = DEFAULT_LOAD,
) -> dict:
    """Measure, write `ppl.json/md/png` into `out`, return the JSON dict. Bad input raises `EvalError`."""
    return run_evaluation("ppl", hf_dir, out, options, overwrite, load, measure_ppl, ppl_markdown, plot_ppl)


def measure_ppl(model: torch.nn.Module, tokenizer: Any, hf_dir: Path, options: PplOptions) -> dict:
    """Every length, full and sparse at every budget, on the same tokens (see the module docstring)."""
    cfg = model.config
    lengths = positive_ints(options.lengths or [cfg.max_position_embeddings], "--lengths")
    default_count = cfg.block_count
    budgets = sorted({default_count, *(options.block_counts or [])})
    stream, source = load_tokens(options.data, hf_dir, tokenizer, options.windows * max(lengths) + 1)
    if stream.numel() < max(lengths) + 1:
        raise EvalError(
            f"{options.data}: holds {stream.numel()} tokens, fewer than one window of {max(lengths)} + 1; "
            "use shorter --lengths or more data"
        )
    num_tokens = (stream.numel() - 1) // max(lengths) * max(lengths)
    results = []
    for length in lengths:
        cut = token_windows(stream, length, num_tokens)
        for mode, count in [("full", None)] + [("sparse", k) for k in budgets]:
            set_mode(model, mode, count)
            nll = summed_nll(model, cut, options.batch_size) / (cut.shape[0] * length)
            log.info("length %d, %s%s: ppl %.4g", length, mode, f" K={count}" if count else "", math.exp(nll))
            results.append(
                {
                    "length": length,
                    "mode": mode,
                    "block_count": count,
                    "windows": cut.shape[0],
                    "tokens": cut.shape[0] * length,
                    "nll": nll,
                    "ppl": math.exp(nll),
                }
            )
    return {
        "data": source,
        "block_size": cfg.block_size,
        "default_block_count": default_count,
        "training_length": cfg.max_position_embeddings,
        "rope_parameters": cfg.rope_parameters,
        "results": results,
    }


def ppl_markdown(report: dict) -> str:
    """Two tables: full vs sparse at the export's budget per length; the budget sweep (rows: block_count)."""
    by_length: dict[int, dict] = {}
    for r in report["results"]:
        by_length.setdefault(r["length"], {})[r["block_count"]] = r  # full attention under None
    k0 = report["default_block_count"]
    summary = [
        [
            n,
            m[None]["windows"],
            m[None]["tokens"],
            m[None]["ppl"],
            m[k0]["ppl"],
            m[k0]["ppl"] / m[None]["ppl"],
        ]
        for n, m in by_length.items()
    ]
    budgets = sorted(k for k in next(iter(by_length.values())) if k is not None)
    sweep = [[k, *(m[k]["ppl"] for m in by_length.values())] for k in budgets]
    sweep.append(["full", *(m[None]["ppl"] for m in by_length.values())])
    return "\n".join(
        [
            f"# Perplexity: {report['model']}\n",
            f"Data: {report['data']}; block size {report['block_size']}; training length "
            f"{report['training_length']}; RoPE {report['rope_parameters']}.\n",
            "## Full vs sparse (the export's budget)\n",
            markdown_table(
                ["length", "windows", "tokens", "ppl full", f"ppl sparse (K={k0})", "sparse / full"], summary
            ),
            "## Budget sweep (sparse ppl by block_count; full attention in the last row)\n",
            markdown_table(["block_count", *(f"L={n}" for n in by_length)], sweep),
        ]
    )


def plot_ppl(report: dict, path: Path) -> None:
    """Left: ppl vs length (full, sparse at the export's budget). Right: ppl vs block_count per length."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    results = report["results"]
    k0 = report["default_block_count"]
    for label, count in [("full", None), (f"sparse K={k0}", k0)]:
        points = sorted((r["length"], r["ppl"]) for r in results if r["block_count"] == count)
        left.plot(*zip(*points, strict=True), marker="o", label=label)
    left.axvline(report["training_length"], color="gray", linestyle=":", label="training length")
    left.set(xlabel="context length (tokens)", ylabel="perplexity", title="ppl vs length")
    log2_ticks(left, sorted({r["length"] for r in results}))
    left.legend()
    for i, length in enumerate(sorted({r["length"] for r in results})):
        rows = [r for r in results if r["length"] == length]
        points = sorted((r["block_count"], r["ppl"]) for r in rows if r["mode"] == "sparse")
        right.plot(*zip(*points, strict=True), marker="o", color=f"C{i}", label=f"L={length}")
        full = next(r["ppl"] for r in rows if r["mode"] == "full")
        right.axhline(full, color=f"C{i}", linestyle="--", linewidth=0.8)
    right.set(xlabel="block_count (K)", ylabel="perplexity", title="sparse budget (dashed: full)")
    log2_ticks(right, sorted({r["block_count"] for r in results if r["mode"] == "sparse"}))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log2_ticks(ax, values: list[int]) -> None:
    """A base-2 log x axis labelled at `values` only."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.minorticks_off()
