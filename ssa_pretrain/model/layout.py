"""The model's weight layout, in one table: each weight's Megatron name, its Hugging Face (Llama) names,
how tensor parallelism holds it and its shape from the model config.

The table drives `ssa convert` (the TP gather, the shape check against the config, the export's state dict)
and the analytic parameter count (`ssa params`, MFU). Names are templates, `{i}` the layer index; a shape is
the TP=1 weight's, `[out, in]` for a linear (`y = x W^T`, in Megatron and HF alike).

Two Megatron weights are fused and split for HF:
* `linear_qkv` is grouped per kv head, `[q of the group's heads, k, v] x kv_heads`. A TP rank holds whole
  groups, so its shards concatenate on dim 0 as any column-parallel weight's do.
* `linear_fc1` is `[gate; up]` (SwiGLU) on every TP rank, so the full weight is
  `[gate_0; …; gate_{tp-1}; up_0; …; up_{tp-1}]`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from ssa_pretrain.config import ModelConfig

Split = Literal["column", "row", "column_gate_up", "replicated"]
"""How the TP ranks hold a weight: `column` a slice of its rows (dim 0), `row` a slice of its columns
(dim 1), `column_gate_up` `[gate; up]` of its own slice of both, `replicated` the whole weight."""

ToHF = Literal["copy", "drop_padding", "split_qkv", "split_gate_up"]
"""What the export does with a weight: copy it, drop the rows past the tokenizer's vocabulary (Megatron pads
the vocabulary), split the fused qkv into q, k, v or fc1 into gate, up (the `hf` names, in that order)."""


@dataclass(frozen=True)
class Weight:
    """One row of the table."""

    megatron: str
    """Name in the Megatron state dict; `{i}` is the layer index."""
    hf: tuple[str, ...]
    """Names in the export, one per part `to_hf` makes."""
    split: Split
    shape: Callable[[ModelConfig, int], tuple[int, ...]]
    """TP=1 shape from the model config and the padded vocabulary size."""
    to_hf: ToHF = "copy"
    gate: bool = False
    """Only with the per-head output gate (`ssa.output_gate`)."""
    tied_to: str | None = None
    """With `model.tie_embeddings` the model holds no weight of its own: the export's is this Megatron one."""

    def name(self, layer: int | None) -> str:
        return self.megatron.format(i=layer)

    def hf_names(self, layer: int | None) -> tuple[str, ...]:
        return tuple(name.format(i=layer) for name in self.hf)


# Shapes: `m` the model config, `v` the padded vocabulary size.
LAYOUT: tuple[Weight, ...] = (
    Weight(
        "embedding.word_embeddings.weight",
        ("model.embed_tokens.weight",),
        "column",
        lambda m, v: (v, m.hidden_size),
        to_hf="drop_padding",
    ),
    Weight(
        "decoder.layers.{i}.input_layernorm.weight",
        ("model.layers.{i}.input_layernorm.weight",),
        "replicated",
        lambda m, v: (m.hidden_size,),
    ),
    Weight(
        "decoder.layers.{i}.self_attention.linear_qkv.weight",
        (
            "model.layers.{i}.self_attn.q_proj.weight",
            "model.layers.{i}.self_attn.k_proj.weight",
            "model.layers.{i}.self_attn.v_proj.weight",
        ),
        "column",
        lambda m, v: ((m.num_attention_heads + 2 * m.num_kv_heads) * m.kv_channels, m.hidden_size),
        to_hf="split_qkv",
    ),
    Weight(
        "decoder.layers.{i}.self_attention.linear_proj.weight",
        ("model.layers.{i}.self_attn.o_proj.weight",),
        "row",
        lambda m, v: (m.hidden_size, m.num_attention_heads * m.kv_channels),
    ),
    Weight(
        "decoder.layers.{i}.self_attention.linear_gate.weight",
        ("model.layers.{i}.self_attn.gate_proj.weight",),
        "column",
        lambda m, v: (m.num_attention_heads, m.hidden_size),
        gate=True,
    ),
    Weight(
        "decoder.layers.{i}.pre_mlp_layernorm.weight",
        ("model.layers.{i}.post_attention_layernorm.weight",),
        "replicated",
        lambda m, v: (m.hidden_size,),
    ),
    Weight(
        "decoder.layers.{i}.mlp.linear_fc1.weight",
        ("model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
        "column_gate_up",
        lambda m, v: (2 * m.ffn_hidden_size, m.hidden_size),
        to_hf="split_gate_up",
    ),
    Weight(
        "decoder.layers.{i}.mlp.linear_fc2.weight",
        ("model.layers.{i}.mlp.down_proj.weight",),
        "row",
        lambda m, v: (m.hidden_size, m.ffn_hidden_size),
    ),
    Weight(
        "decoder.final_layernorm.weight",
        ("model.norm.weight",),
        "replicated",
        lambda m, v: (m.hidden_size,),
    ),
    Weight(
        "output_layer.weight",
        ("lm_head.weight",),
        "column",
        lambda m, v: (v, m.hidden_size),
        to_hf="drop_padding",
        tied_to="embedding.word_embeddings.weight",
    ),
)

_PATTERNS = {w: re.compile(r"\d+".join(map(re.escape, w.megatron.split("{i}")))) for w in LAYOUT}


def find(name: str) -> Weight | None:
    """The row of a Megatron state-dict name (`decoder.layers.3.mlp.linear_fc1.weight`); None if none."""
    return next((w for w in LAYOUT if _PATTERNS[w].fullmatch(name)), None)


def model_weights(model: ModelConfig, output_gate: bool) -> list[tuple[Weight, int | None]]:
    """(row, layer index or None) of every weight the model holds, in Megatron's order: embedding, layer by
    layer, final norm, output projection."""
    rows = [w for w in LAYOUT if (output_gate or not w.gate) and not (w.tied_to and model.tie_embeddings)]
    weights = []
    for per_layer, group in itertools.groupby(rows, key=lambda w: "{i}" in w.megatron):
        group = list(group)
        for layer in range(model.num_layers) if per_layer else [None]:
            weights += [(w, layer) for w in group]
    return weights


def shapes(model: ModelConfig, padded_vocab: int, output_gate: bool) -> dict[str, tuple[int, ...]]:
    """Megatron name -> shape of every weight of the TP=1 model."""
    return {w.name(layer): w.shape(model, padded_vocab) for w, layer in model_weights(model, output_gate)}


def merge_shards(weight: Weight, parts: list[torch.Tensor]) -> torch.Tensor:
    """The TP=1 `weight` from its shard on every TP rank (in rank order)."""
    if weight.split == "replicated":
        return parts[0]
    if weight.split == "row":
        return torch.cat(parts, dim=1)
    if weight.split == "column_gate_up":
        gates, ups = zip(*(p.chunk(2, dim=0) for p in parts), strict=True)
        return torch.cat([*gates, *ups], dim=0)
    return torch.cat(parts, dim=0)


def split_qkv(qkv: torch.Tensor, model: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused `linear_qkv` `[(heads + 2·kv_heads)·d, hidden]` -> q `[heads·d, hidden]`, k and v
    `[kv_heads·d, hidden]`."""
    heads, kv_heads, d = model.num_attention_heads, model.num_kv_heads, model.kv_channels
    group = heads // kv_heads
    qkv = qkv.view(kv_heads, (group + 2) * d, -1)  # [kv_heads, q of the group's heads + k + v, hidden]
    return (
        qkv[:, : group * d].reshape(heads * d, -1),
        qkv[:, group * d : (group + 1) * d].reshape(kv_heads * d, -1),
        qkv[:, (group + 1) * d :].reshape(kv_heads * d, -1),
    )


def _hf_parts(
    weight: Weight, tensor: torch.Tensor, model: ModelConfig, vocab_size: int
) -> tuple[torch.Tensor, ...]:
    if weight.to_hf == "drop_padding":
        return (tensor[:vocab_size],)
    if weight.to_hf == "split_qkv":
        return split_qkv(tensor, model)
    if weight.to_hf == "split_gate_up":
        return tensor.chunk(2, dim=0)
    return (tensor,)


def hf_state_dict(
    state: dict[str, torch.Tensor], model: ModelConfig, output_gate: bool, vocab_size: int
) -> dict[str, torch.Tensor]:
    """TP=1 Megatron weights -> the export's (Llama-named) weights; the vocabulary cut to `vocab_size`."""
    out: dict[str, torch.Tensor] = {}
    for w, layer in model_weights(model, output_gate):
        out.update(zip(w.hf_names(layer), _hf_parts(w, state[w.name(layer)], model, vocab_size), strict=True))
    for w in LAYOUT:
        if w.tied_to and model.tie_embeddings:  # the very tensor of the weight it is tied to
            (tied,) = find(w.tied_to).hf
            out[w.hf[0]] = out[tied]
    return {k: v.contiguous() for k, v in out.items()}
