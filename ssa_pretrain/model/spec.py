"""The SSA transformer-layer spec: Megatron's local (non-TransformerEngine) GPT layer with SSA attention.

Megatron-Core builds every part of a layer from a `ModuleSpec`; we take its local spec and swap slots,
exactly as its own spec functions switch backends:

* `self_attention.submodules.core_attention` -> `SSACoreAttention` (full + block-sparse + alignment);
* `self_attention.module` -> `SSASelfAttention` (the core attention applies RoPE; the per-head output gate);
* `input_layernorm` / `pre_mlp_layernorm` (and the block's final norm) -> our `RMSNorm`, which, unlike
  Megatron's `WrappedTorchNorm`, works with sequence parallelism.
"""

from __future__ import annotations

import copy

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from ssa_pretrain.model.attention import SSACoreAttention, SSASelfAttention
from ssa_pretrain.model.norm import RMSNorm


def get_ssa_layer_local_spec() -> ModuleSpec:
    """A GPT layer spec (RMSNorm, SwiGLU MLP, Megatron parallel linears) whose attention is SSA."""
    spec = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    spec.submodules.input_layernorm = spec.submodules.pre_mlp_layernorm = RMSNorm
    attention = spec.submodules.self_attention
    attention.submodules.core_attention = SSACoreAttention
    attention.module = SSASelfAttention
    return spec


def get_ssa_block_spec(num_layers: int) -> TransformerBlockSubmodules:
    """The decoder: `num_layers` SSA layers and the final RMSNorm (Megatron would pick `WrappedTorchNorm`)."""
    return TransformerBlockSubmodules(
        layer_specs=[get_ssa_layer_local_spec()] * num_layers, layer_norm=RMSNorm
    )
