"""`ssa eval niah`: synthetic needle-in-a-haystack (key–value retrieval in filler text), full vs sparse.

One trial at context length `L` and depth `d` (0 = start, 1 = end of the haystack):

    filler[:p]  +  " The secret code of the {key} is {value}. "  +  filler[p:H]
      +  "\\nQuestion: what is the secret code of the {key}?\\nAnswer: the secret code of the {key} is"

with `H = L − len(needle) − len(question)` filler tokens (prose from the bundled corpus, a random stretch
per trial) and `p = round(d · H)`; every piece is tokenized on its own and the token lists concatenated, so
the context is exactly `L` tokens. The answer is `" {value}"` (a random `--digits`-digit number).

Scores per (length, depth, mode), averaged over `--trials`:

* `accuracy`: the right value has the highest summed log-probability among itself and `--distractors`
  other random numbers of the same digit count (chance: 1 / (1 + distractors)).
* `greedy`: greedy decoding would produce the right value's tokens exactly (every answer token is the
  argmax given the context and the answer tokens before it; equivalent to greedy generation).
* `logprob`: mean summed log-probability of the right value; `margin`: minus the best distractor's.

The context is run once with the KV cache (the export's `SSACache` in sparse mode); the candidates are
scored as one batch continuing that cache. Lengths beyond the training length work with any RoPE; pass
`--rope-scaling llama3 --rope-factor F` to scale positions (e.g. F = 4 for a model trained at 8K, at 32K).

Files: `niah.json`, `niah.md`, `niah.png` (heat maps: depth × length, per mode and metric).
"""

from __future__ import annotations

import json
import logging
import lzma
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ssa_pretrain.eval.command import run_evaluation
from ssa_pretrain.eval.errors import EvalError
from ssa_pretrain.eval.export import set_mode
from ssa_pretrain.eval.options import DEFAULT_LOAD, LoadOptions, NiahOptions, positive_ints
from ssa_pretrain.eval.output import markdown_table, pyplot
from ssa_pretrain.hf.modeling_ssa import CACHE_ARG  # the cache's name in the installed transformers

log = logging.getLogger(__name__)

KEYS = [
    "red fox",
    "blue whale",
    "green door",
    "silver key",
    "golden bell",
    "old tower",
    "quiet river",
    "north gate",
    "small lamp",
    "iron bridge",
    "white horse",
    "dark forest",
]
NEEDLE = " The secret code of the {key} is {value}. "
QUESTION = "\nQuestion: what is the secret code of the {key}?\nAnswer: the secret code of the {key} is"
ANSWER = " {value}"


def filler_tokens(tokenizer: Any, count: int) -> torch.Tensor:
    """At least `count` tokens of prose (the bundled corpus' web documents), `[N]` (all of them if fewer)."""
    from ssa_pretrain.data.prepare import default_corpus

    ids: list[int] = []
    with lzma.open(default_corpus(), "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc.get("source", "").startswith("web/"):
                ids += tokenizer(doc["text"] + "\n\n", add_special_tokens=False).input_ids
                if len(ids) >= count:
                    break
    return torch.tensor(ids, dtype=torch.long)


def haystack(
    pool: torch.Tensor, needle: list[int], question: list[int], length: int, depth: float, where: float
) -> torch.Tensor:
    """The context `[length]`: filler from `pool` (at relative offset `where`), the needle at `depth`, the
    question last."""
    hay = length - len(needle) - len(question)
    offset = int(where * (pool.numel() - hay))
    filler = pool[offset : offset + hay]
    p = round(depth * hay)
    return torch.cat([filler[:p], torch.tensor(needle), filler[p:], torch.tensor(question)])


@torch.no_grad()
def score_trial(
    model: torch.nn.Module, context: torch.Tensor, candidates: list[list[int]]
) -> tuple[torch.Tensor, bool]:
    """(summed log-prob of every candidate `[C]`, whether greedy decoding gives candidate 0 exactly).

    The context runs once and fills the KV cache; the candidates continue it as one right-padded batch.

    Args:
        context: `[L]` token ids; candidates: `C` token lists (candidate 0 is the right answer).
    """
    device = model.device
    out = model(input_ids=context[None].to(device), use_cache=True)
    first = F.log_softmax(out.logits[0, -1].float(), dim=-1)  # [V] next-token distribution after the context
    cache = getattr(out, CACHE_ARG)
    cache.batch_repeat_interleave(len(candidates))
    width = max(len(c) for c in candidates)
    # pad id 0: pads come after every scored token, so causal attention never lets them matter
    batch = torch.tensor([c + [0] * (width - len(c)) for c in candidates], device=device)  # [C, W]
    rest = F.log_softmax(model(input_ids=batch, **{CACHE_ARG: cache}).logits.float(), -1)  # [C, W, V]
    # [len, V] per candidate: the distribution each of its tokens is drawn from
    steps = [torch.cat([first[None], rest[i, : len(c) - 1]]) for i, c in enumerate(candidates)]
    targets = [torch.tensor(c, device=device)[:, None] for c in candidates]  # [len, 1] each
    scores = [s.gather(-1, t).sum() for s, t in zip(steps, targets, strict=True)]
    greedy = steps[0].argmax(-1).tolist() == candidates[0]
    return torch.stack(scores).cpu(), greedy


def evaluate_niah(
    hf_dir: str | Path,
    out: str | Path,
    options: NiahOptions,
    *,
    overwrite: bool = False,
    load: LoadOptions = DEFAULT_LOAD,
) -> dict:
    """Measure, write `niah.json/md/png` into `out`, return the JSON dict. Bad input raises `EvalError`."""
    return run_evaluation(
        "niah", hf_dir, out, options, overwrite, load, measure_niah, niah_markdown, plot_niah
    )


def measure_niah(model: torch.nn.Module, tokenizer: Any, hf_dir: Path, options: NiahOptions) -> dict:
    """The same trials in every (length, depth) cell, full and sparse (see the module docstring)."""
    cfg = model.config
    lengths = positive_ints(options.lengths or [cfg.max_position_embeddings], "--lengths")
    depths = sorted(set(options.depths))
    block_count = options.block_count or cfg.block_count
    trials, distractors, digits = options.trials, options.distractors, options.digits

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    widest = 10**digits - 1
    longest = max(
        len(encode(QUESTION.format(key=k))) + len(encode(NEEDLE.format(key=k, value=widest))) for k in KEYS
    )
    if min(lengths) < longest + 8:
        raise EvalError(
            f"--lengths {min(lengths)}: too short for the needle and question ({longest} tokens) "
            f"plus filler; use lengths >= {longest + 8}"
        )
    pool = filler_tokens(tokenizer, 2 * max(lengths))
    if pool.numel() < max(lengths):
        raise EvalError(
            f"the bundled corpus holds {pool.numel()} filler tokens, fewer than --lengths {max(lengths)}"
        )
    # the same trials (key, values, filler offset) in every cell and mode; values[0] is the right one
    rng = random.Random(options.seed)
    plan = []
    for _ in range(trials):
        key = rng.choice(KEYS)
        values = rng.sample(range(10 ** (digits - 1), 10**digits), distractors + 1)
        plan.append((key, [str(v) for v in values], rng.random()))
    cells = []
    for length in lengths:
        for depth in depths:
            for mode in ("full", "sparse"):
                set_mode(model, mode, block_count)
                hits = greedy = 0
                logprob = margin = 0.0
                for key, values, where in plan:
                    needle = encode(NEEDLE.format(key=key, value=values[0]))
                    context = haystack(pool, needle, encode(QUESTION.format(key=key)), length, depth, where)
                    answers = [encode(ANSWER.format(value=v)) for v in values]
                    scores, exact = score_trial(model, context, answers)
                    hits += int(scores[0] > scores[1:].max())
                    greedy += int(exact)
                    logprob += float(scores[0])
                    margin += float(scores[0] - scores[1:].max())
                cells.append(
                    {
                        "length": length,
                        "depth": depth,
                        "mode": mode,
                        "accuracy": hits / trials,
                        "greedy": greedy / trials,
                        "logprob": logprob / trials,
                        "margin": margin / trials,
                    }
                )
        for mode in ("full", "sparse"):
            accuracy = [c["accuracy"] for c in cells if c["length"] == length and c["mode"] == mode]
            log.info(
                "length %d, %s: accuracy %.3f (mean over depths)", length, mode, sum(accuracy) / len(depths)
            )
    return {
        "training_length": cfg.max_position_embeddings,
        "rope_parameters": cfg.rope_parameters,
        "block_size": cfg.block_size,
        "block_count": block_count,
        "trials": trials,
        "distractors": distractors,
        "chance_accuracy": 1 / (distractors + 1),
        "digits": digits,
        "seed": options.seed,
        "lengths": lengths,
        "depths": depths,
        "cells": cells,
    }


def _grid(report: dict, mode: str, metric: str) -> list[list[float]]:
    """`[depth][length]` values of one mode and metric."""
    value = {(c["depth"], c["length"]): c[metric] for c in report["cells"] if c["mode"] == mode}
    return [[value[(d, n)] for n in report["lengths"]] for d in report["depths"]]


def niah_markdown(report: dict) -> str:
    text = [
        f"# Needle in a haystack: {report['model']}\n",
        f"{report['trials']} trials per cell; accuracy = the right value beats {report['distractors']} "
        f"distractors (chance {report['chance_accuracy']:.3g}); greedy = greedy decoding gives it exactly. "
        f"Training length {report['training_length']}; RoPE {report['rope_parameters']}; sparse budget "
        f"K = {report['block_count']} blocks of {report['block_size']}.\n",
    ]
    for metric in ("accuracy", "greedy", "margin"):
        for mode in ("full", "sparse"):
            text.append(f"\n## {metric}, {mode} (rows: depth, columns: length)\n")
            rows = [[d, *row] for d, row in zip(report["depths"], _grid(report, mode, metric), strict=True)]
            text.append(markdown_table(["depth", *map(str, report["lengths"])], rows))
    return "\n".join(text)


def plot_niah(report: dict, path: Path) -> None:
    """Heat maps (depth × length) of accuracy and greedy exact match, full and sparse."""
    plt = pyplot()
    fig, axes = plt.subplots(
        2,
        2,
        figsize=(4 + 1.1 * len(report["lengths"]) * 2, 2 + 0.5 * len(report["depths"]) * 2),
        squeeze=False,
    )
    for row, metric in enumerate(("accuracy", "greedy")):
        for col, mode in enumerate(("full", "sparse")):
            ax, grid = axes[row][col], _grid(report, mode, metric)
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            for i, values in enumerate(grid):
                for j, v in enumerate(values):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(report["lengths"])), [str(n) for n in report["lengths"]])
            ax.set_yticks(range(len(report["depths"])), [f"{d:g}" for d in report["depths"]])
            ax.set(xlabel="context length", ylabel="needle depth", title=f"{metric}, {mode}")
            fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
