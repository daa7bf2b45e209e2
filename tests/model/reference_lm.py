"""A plain-PyTorch Llama-style causal LM that reads a Megatron GPT's weights: the oracle for our model.

Written independently of Megatron: RMSNorm, RoPE (rotate-half), GQA attention through `ssa_kernels`'
reference ops, the per-head sigmoid output gate, SwiGLU, tied output projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ssa_kernels.full_attention.naive import naive_full_attention
from ssa_kernels.select_blocks.naive import naive_select_blocks
from ssa_kernels.sparse_attention.naive import naive_sparse_attention


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x [b, t, heads, d]: rotate-half RoPE with positions 0..t-1."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.outer(torch.arange(x.shape[1], dtype=torch.float32), inv_freq)
    cos, sin = (
        torch.cat([angles, angles], -1).cos()[None, :, None],
        torch.cat([angles, angles], -1).sin()[None, :, None],
    )
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def split_qkv(weight: torch.Tensor, heads: int, kv_heads: int, d: int) -> tuple[torch.Tensor, ...]:
    """Megatron's fused QKV weight is grouped per kv head: [q of the group's heads, k, v] x kv_heads."""
    g = heads // kv_heads
    w = weight.view(kv_heads, (g + 2) * d, -1)
    q = w[:, : g * d].reshape(heads * d, -1)
    k = w[:, g * d : (g + 1) * d].reshape(kv_heads * d, -1)
    v = w[:, (g + 1) * d :].reshape(kv_heads * d, -1)
    return q, k, v


@torch.no_grad()
def reference_logits(megatron_gpt, cfg, tokens: torch.Tensor, mode: str = "full") -> torch.Tensor:
    """Logits [b, t, vocab] of the Megatron model's weights computed without Megatron."""
    m = cfg.model
    sd = {k: v.float() for k, v in megatron_gpt.state_dict().items() if not k.endswith("_extra_state")}
    heads, kv, d = m.num_attention_heads, m.num_kv_heads, m.kv_channels
    x = sd["embedding.word_embeddings.weight"][tokens]
    b, t, _ = x.shape
    for i in range(m.num_layers):
        p = f"decoder.layers.{i}."
        h = rms_norm(x, sd[p + "input_layernorm.weight"], m.norm_eps)
        wq, wk, wv = split_qkv(sd[p + "self_attention.linear_qkv.weight"], heads, kv, d)
        q = rope((h @ wq.T).view(b, t, heads, d), m.rope_theta)
        k = rope((h @ wk.T).view(b, t, kv, d), m.rope_theta)
        v = (h @ wv.T).view(b, t, kv, d)
        if mode == "full":
            a = naive_full_attention(q, k, v, causal=True)[0]
        else:
            idx = naive_select_blocks(q, k, cfg.ssa.block_size, cfg.ssa.block_count)
            a = naive_sparse_attention(q, k, v, idx, cfg.ssa.block_size)[0]
        if cfg.ssa.output_gate:
            a = a * torch.sigmoid(h @ sd[p + "self_attention.linear_gate.weight"].T).unsqueeze(-1)
        x = x + a.reshape(b, t, heads * d) @ sd[p + "self_attention.linear_proj.weight"].T
        h = rms_norm(x, sd[p + "pre_mlp_layernorm.weight"], m.norm_eps)
        gate, up = (h @ sd[p + "mlp.linear_fc1.weight"].T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.linear_fc2.weight"].T
    x = rms_norm(x, sd["decoder.final_layernorm.weight"], m.norm_eps)
    out_w = sd["embedding.word_embeddings.weight"] if m.tie_embeddings else sd["output_layer.weight"]
    return x @ out_w.T
