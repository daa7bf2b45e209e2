"""SSA attention as Megatron-Core modules: a core attention and the self-attention around it.

Both are injected through a `ModuleSpec` (see `spec.py`); Megatron's layer is not forked.

* `SSACoreAttention` replaces `DotProductAttention`. It receives `query [sq, b, hq, d]` and
  `key/value [sk, b, hkv, d]` (this rank's heads; GQA not expanded) and returns `[sq, b, hq * d]`.
  It runs the branch of the current mode and, in SSA training, the counterpart branch too, whose only
  use is the alignment loss attached to the output (`alignment.py`).
* `SSASelfAttention` is Megatron's `SelfAttention` with two changes:
  - RoPE moves into the core attention, which rotates query and key in the same pass that copies them
    into the kernels' `[b, s, heads, d]` layout (`to_batch_major`; one compiled kernel each way with
    `train.fused_elementwise`) instead of Megatron's eager RoPE of some ten passes over query and key;
  - the per-head output gate `g = sigmoid(W_g x)` (NSA / released SSA models), when configured. It
    reuses Megatron's gating hook: with `attention_output_gate` set, Megatron applies
    `_apply_output_gate(core_out, gate)` between core attention and the output projection. We return our
    per-head gate from `get_query_key_value_tensors` and override `_apply_output_gate`; Megatron's own
    (element-wise, carved out of `linear_qkv`) gate weights are not created.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.module import MegatronModule
from torch.profiler import record_function

from ssa_pretrain.config import SSAConfig
from ssa_pretrain.model.alignment import attach_alignment
from ssa_pretrain.model.modes import Mode
from ssa_pretrain.parallel import (
    context_parallel_full_attention,
    context_parallel_sparse_attention,
    context_parallel_ssa_attention,
)
from ssa_pretrain.parallel.collectives import as_comm
from ssa_pretrain.parallelize import core_attention_groups, cp_comm_from_megatron


@dataclass
class SSATransformerConfig(TransformerConfig):
    """Megatron's TransformerConfig plus the SSA section (Megatron's pattern, as MLATransformerConfig)."""

    ssa: SSAConfig | None = None
    """The attention method; required by the SSA modules."""


class SSACoreAttention(MegatronModule):
    """Full and block-sparse causal attention of one layer, with the SSA alignment loss.

    `mode` is set by `set_attention_mode` before each forward (training: per micro-step; evaluation and
    inference: `full` or `sparse`). `block_size` / `block_count` default to the config and may be changed
    at inference time (the sparsity budget).
    """

    def __init__(
        self,
        config: SSATransformerConfig,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if config.ssa is None:
            raise ValueError(
                "SSACoreAttention needs SSATransformerConfig.ssa (build the model with build_model)"
            )
        if attention_type != "self":
            raise ValueError(f"SSA attention is causal self-attention; got attention_type={attention_type!r}")
        if (attention_dropout if attention_dropout is not None else config.attention_dropout) > 0:
            raise ValueError("SSA attention has no attention dropout; set attention_dropout=0")
        self.ssa: SSAConfig = config.ssa
        self.layer_number = layer_number
        self.softmax_scale = softmax_scale
        tp, self.cp_group = core_attention_groups(pg_collection)
        self.cp_comm = cp_comm_from_megatron(cp_comm_type)  # parallel.cp_comm, through Megatron
        # Each TP rank holds 1/tp of the heads; the global alignment loss is the mean over ranks.
        self.aux_weight = self.ssa.alpha / (config.num_layers * tp)
        self.mode: Mode = self.ssa.effective_inference_mode
        self.block_size = self.ssa.block_size
        self.block_count = self.ssa.block_count
        self.last_alignment: torch.Tensor | None = (
            None  # D(a_full, a_sparse) of the last forward, for logging
        )
        # RoPE frequencies (query's, key's) `[s, 1, 1, d]` for the next forward, set by `SSASelfAttention`
        # (None: query and key come rotated, or without positions)
        self.rotary_pos_emb: tuple[torch.Tensor, torch.Tensor] | None = None

    # Each branch takes this rank's share `[b, s, heads, d]`; under context parallelism the ring ops of
    # `ssa_pretrain.parallel` see the whole sequence, and a CP group of one calls `ssa_kernels` directly.

    # Profiler ranges (`tools/bench_train.py` splits the step by them; a no-op when not profiling).

    def _full(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with record_function("attention.full"):
            return context_parallel_full_attention(q, k, v, self.cp_group, self.softmax_scale, self.cp_comm)[
                0
            ]

    def _sparse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with record_function("attention.sparse"):
            return context_parallel_sparse_attention(
                q,
                k,
                v,
                self.block_size,
                self.block_count,
                self.cp_group,
                self.softmax_scale,
                comm=self.cp_comm,
            )[0]

    def _full_and_sparse(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_full, a_sparse); under context parallelism from one ring pass that serves both branches."""
        if self.cp_group is None or as_comm(self.cp_group).size == 1:
            return self._full(q, k, v), self._sparse(q, k, v)
        (a_full, _), (a_sparse, _) = context_parallel_ssa_attention(
            q, k, v, self.block_size, self.block_count, self.cp_group, self.softmax_scale, comm=self.cp_comm
        )
        return a_full, a_sparse

    def computes_alignment(self) -> bool:
        """Whether this forward computes the counterpart branch for the alignment loss."""
        ssa = self.ssa
        return self.training and ssa.variant == "ssa" and ssa.alpha > 0 and (ssa.w_fs > 0 or ssa.w_sf > 0)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type=None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
        **kwargs,
    ) -> torch.Tensor:
        """query [sq, b, hq, d], key/value [sk, b, hkv, d] -> [sq, b, hq * d], causal."""
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError(
                "SSA attention supports neither packed (THD) sequences nor attention bias"
            )
        # [b, s, heads, d], one contiguous copy that both branches save (each kernel would copy its own);
        # `value` is a view of Megatron's fused qkv projection, which a saved view would keep alive whole.
        # The copies of query and key apply RoPE.
        q_freqs, k_freqs = self.rotary_pos_emb or (None, None)
        layout_copy = compiled_to_batch_major if self.config.bias_activation_fusion else to_batch_major
        q, k, v = layout_copy(query, q_freqs), layout_copy(key, k_freqs), layout_copy(value, None)
        if self.computes_alignment():
            a_full, a_sparse = self._full_and_sparse(q, k, v)
            with record_function("attention.alignment"):
                out, self.last_alignment = attach_alignment(
                    a_full, a_sparse, self.mode, self.ssa.w_fs, self.ssa.w_sf, self.aux_weight
                )
        else:
            out = self._full(q, k, v) if self.mode == "full" else self._sparse(q, k, v)
            self.last_alignment = None
        sq, b = query.shape[0], query.shape[1]
        return out.transpose(0, 1).reshape(sq, b, -1)


def to_batch_major(x: torch.Tensor, freqs: torch.Tensor | None) -> torch.Tensor:
    """x `[s, b, heads, d]` -> contiguous `[b, s, heads, d]`, rotated by RoPE when `freqs` `[s, 1, 1, d]`
    (Megatron's non-interleaved rotation: x cos + rotate_half(x) sin, in fp32, rounded once) is given."""
    if freqs is not None:
        if freqs.shape[-1] != x.shape[-1]:
            raise ValueError(f"RoPE over {freqs.shape[-1]} of {x.shape[-1]} channels is not supported")
        x32 = x.float()
        x1, x2 = x32.chunk(2, dim=-1)
        x = (x32 * freqs.cos() + torch.cat((-x2, x1), dim=-1) * freqs.sin()).to(x.dtype)
    return x.transpose(0, 1).contiguous()


compiled_to_batch_major = torch.compile(to_batch_major)  # compiles at its first call, not at import


class SSASelfAttention(SelfAttention):
    """Megatron `SelfAttention` whose core attention applies RoPE, with the optional per-head sigmoid output
    gate of the SSA/NSA models."""

    def __init__(self, config: SSATransformerConfig, submodules, layer_number: int, **kwargs):
        if config.rotary_interleaved:
            raise ValueError("SSA attention applies non-interleaved RoPE; set rotary_interleaved=False")
        # Build Megatron's layer without its element-wise gate (no extra linear_qkv columns) ...
        super().__init__(
            dataclasses.replace(config, attention_output_gate=False), submodules, layer_number, **kwargs
        )
        self.config = config
        if not config.attention_output_gate:
            return
        # ... then, with the gate, switch the gating hook on so forward() applies our per-head gate.
        self.linear_gate = ColumnParallelLinear(
            config.hidden_size,
            config.num_attention_heads,
            config=config,
            init_method=config.init_method,
            gather_output=False,
            bias=False,
            skip_bias_add=False,
            is_expert=False,
            tp_group=self.pg_collection.tp,
        )

    def forward(self, hidden_states: torch.Tensor, *args, rotary_pos_emb=None, **kwargs):
        """Megatron's forward, with the RoPE frequencies handed to the core attention instead (in training
        and evaluation; Megatron's inference paths, given an `inference_context`, keep its own RoPE)."""
        if kwargs.get("inference_context") is not None or kwargs.get("inference_params") is not None:
            self.core_attention.rotary_pos_emb = None
            return super().forward(hidden_states, *args, rotary_pos_emb=rotary_pos_emb, **kwargs)
        if rotary_pos_emb is not None and not isinstance(rotary_pos_emb, tuple):
            rotary_pos_emb = (rotary_pos_emb, rotary_pos_emb)  # self-attention: the same for both
        self.core_attention.rotary_pos_emb = rotary_pos_emb
        return super().forward(hidden_states, *args, rotary_pos_emb=None, **kwargs)

    def get_query_key_value_tensors(
        self, hidden_states, key_value_states=None, output_gate=False, split_qkv=True
    ):
        """Megatron's q/k/v, plus the gate logits `[sq, b, heads / tp]` when the gate is on."""
        qkv = super().get_query_key_value_tensors(hidden_states, key_value_states, split_qkv=split_qkv)
        if not output_gate:
            return qkv
        gate, _ = self.linear_gate(hidden_states)
        return (*qkv, gate)

    def _apply_output_gate(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """`per_head_gate`, compiled into one kernel each way when Megatron compiles its SwiGLU
        (`bias_activation_fusion`, i.e. train.fused_elementwise on CUDA)."""
        return (compiled_per_head_gate if self.config.bias_activation_fusion else per_head_gate)(x, gate)


def per_head_gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x [sq, b, heads * d] times sigmoid(gate [sq, b, heads]) per head; fp32 math, one rounding."""
    sq, b, width = x.shape
    heads = gate.shape[-1]
    gated = x.view(sq, b, heads, width // heads) * torch.sigmoid(gate.float()).unsqueeze(-1)
    return gated.view(sq, b, width).to(x.dtype)


compiled_per_head_gate = torch.compile(per_head_gate)  # compiles at its first call, not at import
