"""The SSA transformer-layer spec: Megatron's local (non-TransformerEngine) GPT layer with SSA attention.

Megatron-Core builds every part of a layer from a `ModuleSpec`; we take its local spec and swap two
slots, exactly as its own spec functions switch backends:

* `self_attention.submodules.core_attention` -> `SSACoreAttention` (full + block-sparse + alignment);
* `self_attention.module` -> `GatedSelfAttention` when the per-head output gate is on.
"""

from __future__ import annotations

import copy

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec

from ssa_pretrain.config import SSAConfig
from ssa_pretrain.model.attention import GatedSelfAttention, SSACoreAttention


def get_ssa_layer_local_spec(ssa: SSAConfig) -> ModuleSpec:
    """A GPT layer spec (RMSNorm, SwiGLU MLP, Megatron parallel linears) whose attention is SSA."""
    spec = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    attention = spec.submodules.self_attention
    attention.submodules.core_attention = SSACoreAttention
    if ssa.output_gate:
        attention.module = GatedSelfAttention
    return spec
