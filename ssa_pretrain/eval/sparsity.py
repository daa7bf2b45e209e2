"""`ssa eval sparsity`: how much full attention falls outside the blocks sparse selection picks, per layer.

On windows of `--length` tokens (default: the training length) from the evaluation data:

* **dropped mass** (per layer and query head): the model runs in *full* mode; in every layer (seen through the
  export's layer probes) the export's own `block_means` and `select_blocks` pick the blocks sparse attention
  would use for each query (budget
  `--block-count`, default the export's), and the dropped mass is the full-attention probability on the
  keys outside them, `Σ_{s not selected} softmax(q·k/√d)[t, s]`, in [0, 1]. It is exactly 0 where a query
  has at most `K` blocks to choose from, so it is reported over all positions and over the positions where
  the budget binds (own block index `>= K`), and per query block.
* **KL(full ‖ sparse)** of the next-token distributions, in nats per token: all layers sparse (the model in
  sparse mode), and per layer with only that layer sparse (the export's `sparse_layers`; the others full).

Files: `sparsity.json`, `sparsity.md`, `sparsity.png` (per layer: dropped mass, KL; dropped mass by query
block).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ssa_pretrain.eval.command import run_evaluation
from ssa_pretrain.eval.errors import EvalError
from ssa_pretrain.eval.export import modeling_module, probing, set_mode
from ssa_pretrain.eval.options import DEFAULT_LOAD, LoadOptions, SparsityOptions
from ssa_pretrain.eval.output import markdown_table, pyplot
from ssa_pretrain.eval.ppl import LOGIT_CHUNK
from ssa_pretrain.eval.tokens import load_tokens, token_windows


class DroppedMass:
    """Per layer, query block and query head: the full-attention mass outside the blocks sparse mode selects.

    Use as the probe of `probing` with the model in full mode, on unpadded windows of `length` tokens.
    """

    def __init__(self, model: torch.nn.Module, length: int, block_count: int) -> None:
        cfg = model.config
        self.module = modeling_module(model)
        self.block_size, self.block_count, self.chunk = cfg.block_size, block_count, cfg.attention_chunk_size
        num_blocks = math.ceil(length / cfg.block_size)
        self.sums = torch.zeros(
            cfg.num_hidden_layers, num_blocks, cfg.num_attention_heads, dtype=torch.float64
        )
        self.queries = torch.zeros(num_blocks, dtype=torch.float64)  # queries seen per query block

    @torch.no_grad()
    def __call__(self, layer: int, q, k, v, q_pos, k_pos) -> None:
        """q `[B, T, HQ, D]`, k `[B, T, HKV, D]` (post-RoPE), q_pos = k_pos `[B, T]` = `0 … T−1`."""
        bs, m = self.block_size, self.module
        batch, num_keys, num_kv_heads = k.shape[:3]
        num_key_blocks = (num_keys - 1) // bs + 1
        scale = q.shape[-1] ** -0.5
        offsets = torch.zeros(batch, dtype=torch.long, device=k.device)
        means = m.block_means(k, offsets, 0, num_keys // bs, bs)  # [B, NB, HKV, D], as the export's forward
        qf, kf = q.float(), k.float()
        key_block = (k_pos // bs)[:, None, None, :]  # [B, 1, 1, S]
        for start in range(0, q.shape[1], self.chunk):
            qc, pc = qf[:, start : start + self.chunk], q_pos[:, start : start + self.chunk]  # [B, C, HQ, D]
            # the blocks sparse mode attends to, [B, C, HKV, NK] -> the keys it keeps, [B, C, HKV, S]
            selected = m.select_blocks(qc, means, pc, bs, self.block_count, num_key_blocks, scale)
            kept = selected.gather(-1, key_block.expand(batch, qc.shape[1], num_kv_heads, num_keys))
            # full-attention probabilities as the export's `attend` computes them: [B, C, HKV, G, S]
            logits = torch.einsum("bchgd,bshd->bchgs", qc.unflatten(2, (num_kv_heads, -1)), kf) * scale
            causal = k_pos[:, None, :] <= pc[:, :, None]  # [B, C, S]
            probs = torch.softmax(logits.masked_fill(~causal[:, :, None, None, :], float("-inf")), dim=-1)
            dropped = (probs * ~kept[:, :, :, None, :]).sum(-1).flatten(2)  # [B, C, HQ]
            query_block = (pc // bs).flatten().cpu()  # [B * C]
            self.sums[layer].index_add_(0, query_block, dropped.flatten(0, 1).double().cpu())
            if layer == 0:
                self.queries.index_add_(0, query_block, torch.ones(query_block.numel(), dtype=torch.float64))

    def summary(self) -> list[dict]:
        """Per layer: mean dropped mass of all queries, where the budget binds (also per head), per block."""
        binds = torch.arange(self.queries.numel()) >= self.block_count  # own block index >= K
        num_heads = self.sums.shape[2]
        out = []
        for layer, sums in enumerate(self.sums):  # sums: [query blocks, HQ]
            bound = sums[binds].sum(0) / self.queries[binds].sum() if binds.any() else None  # [HQ]
            out.append(
                {
                    "layer": layer,
                    "dropped_mass": float(sums.sum() / (self.queries.sum() * num_heads)),
                    "dropped_mass_where_budget_binds": None if bound is None else float(bound.mean()),
                    "dropped_mass_per_head_where_budget_binds": None if bound is None else bound.tolist(),
                    "dropped_mass_by_query_block": (sums.sum(1) / (self.queries * num_heads)).tolist(),
                }
            )
        return out


@torch.no_grad()
def final_hidden(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The last hidden state `[B, T, hidden]` of `inputs [B, T]` (`summed_kl` makes the logits per chunk)."""
    return model.model(input_ids=inputs, use_cache=False).last_hidden_state


@torch.no_grad()
def summed_kl(model: torch.nn.Module, full: torch.Tensor, sparse: torch.Tensor) -> float:
    """Σ over positions of KL(full ‖ sparse) of the next-token distributions; hidden states `[B, T, H]`."""
    total = 0.0
    for c in range(0, full.shape[1], LOGIT_CHUNK):
        p = F.log_softmax(model.lm_head(full[:, c : c + LOGIT_CHUNK]).float(), dim=-1)  # [B, chunk, vocab]
        q = F.log_softmax(model.lm_head(sparse[:, c : c + LOGIT_CHUNK]).float(), dim=-1)
        total += F.kl_div(q, p, log_target=True, reduction="sum").item()
    return max(total, 0.0)  # rounding can make an exact 0 slightly negative


def evaluate_sparsity(
    hf_dir: str | Path,
    out: str | Path,
    options: SparsityOptions,
    *,
    overwrite: bool = False,
    load: LoadOptions = DEFAULT_LOAD,
) -> dict:
    """Measure, write `sparsity.json/md/png` into `out`, return the JSON dict; bad input: `EvalError`."""
    return run_evaluation(
        "sparsity", hf_dir, out, options, overwrite, load, measure_sparsity, sparsity_markdown, plot_sparsity
    )


def measure_sparsity(model: torch.nn.Module, tokenizer: Any, hf_dir: Path, options: SparsityOptions) -> dict:
    """Dropped mass per layer (full mode, probed) and KL(full ‖ sparse): all layers, then each layer alone."""
    cfg = model.config
    length = options.length or cfg.max_position_embeddings
    block_count = options.block_count or cfg.block_count
    stream, source = load_tokens(options.data, hf_dir, tokenizer, options.windows * length + 1)
    if stream.numel() < length + 1:
        raise EvalError(
            f"{options.data}: holds {stream.numel()} tokens, fewer than one window of {length} + 1; "
            "use a shorter --length or more data"
        )
    inputs = token_windows(stream, length, options.windows * length)[:, :-1]  # [N, L]
    num_layers = cfg.num_hidden_layers
    dropped = DroppedMass(model, length, block_count)
    kl_all = 0.0
    kl_layer = [0.0] * num_layers
    for b in range(0, inputs.shape[0], options.batch_size):
        batch = inputs[b : b + options.batch_size].to(model.device)
        set_mode(model, "full")
        with probing(model, dropped):
            full = final_hidden(model, batch)
        set_mode(model, "sparse", block_count)
        kl_all += summed_kl(model, full, final_hidden(model, batch))
        for layer in range(num_layers):
            set_mode(model, "sparse", block_count, sparse_layers=[layer])
            kl_layer[layer] += summed_kl(model, full, final_hidden(model, batch))
    positions = inputs.numel()
    layers = dropped.summary()
    for entry in layers:
        entry["kl_only_this_layer_sparse"] = kl_layer[entry["layer"]] / positions
    return {
        "data": source,
        "length": length,
        "windows": inputs.shape[0],
        "block_size": cfg.block_size,
        "block_count": block_count,
        "blocks_per_window": math.ceil(length / cfg.block_size),
        "rope_parameters": cfg.rope_parameters,
        "kl_all_layers_sparse": kl_all / positions,
        "positions": positions,
        "layers": layers,
    }


def sparsity_markdown(report: dict) -> str:
    header = [
        "layer",
        "dropped mass (all queries)",
        f"dropped mass (own block >= {report['block_count']})",
        "KL, only this layer sparse",
    ]
    rows = [
        [e["layer"], e["dropped_mass"], e["dropped_mass_where_budget_binds"], e["kl_only_this_layer_sparse"]]
        for e in report["layers"]
    ]
    return (
        f"# Attention sparsity: {report['model']}\n\n"
        f"Data: {report['data']}; {report['windows']} windows of {report['length']} tokens "
        f"({report['blocks_per_window']} blocks of {report['block_size']}); "
        f"budget K = {report['block_count']}.\n\n"
        f"KL(full ‖ sparse), all layers sparse: {report['kl_all_layers_sparse']:.4g} nats/token.\n\n"
        + markdown_table(header, rows)
    )


def plot_sparsity(report: dict, path: Path) -> None:
    """Dropped mass per layer (bars), KL per layer (bars, all-layers line), dropped mass by query block."""
    plt = pyplot()
    layers = report["layers"]
    x = [e["layer"] for e in layers]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].bar([i - 0.2 for i in x], [e["dropped_mass"] for e in layers], width=0.4, label="all queries")
    binds = [e["dropped_mass_where_budget_binds"] or 0.0 for e in layers]
    axes[0].bar([i + 0.2 for i in x], binds, width=0.4, label=f"own block >= K={report['block_count']}")
    axes[0].set(xlabel="layer", ylabel="dropped attention mass", title="mass outside the selected blocks")
    axes[0].legend()
    axes[1].bar(x, [e["kl_only_this_layer_sparse"] for e in layers], label="only this layer sparse")
    axes[1].axhline(report["kl_all_layers_sparse"], color="k", linestyle="--", label="all layers sparse")
    axes[1].set(xlabel="layer", ylabel="KL(full ‖ sparse), nats/token", title="next-token KL")
    axes[1].legend()
    for e in layers:
        axes[2].plot(e["dropped_mass_by_query_block"], marker=".", label=f"layer {e['layer']}")
    axes[2].axvline(report["block_count"] - 0.5, color="gray", linestyle=":")
    axes[2].set(xlabel="query block index", ylabel="dropped attention mass", title="by query position")
    axes[2].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
