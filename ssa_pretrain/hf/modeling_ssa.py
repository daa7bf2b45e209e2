"""SSA (Sparse Sparse Attention) causal LM for Hugging Face transformers, full or sparse at inference.

Copied into every export by `ssa convert` and loaded with `trust_remote_code=True`; it needs nothing but
torch and transformers (and uses `ssa_kernels`' fused ops for an unpadded prefill on CUDA when that is
installed). Everything that is Llama's comes from transformers (RMSNorm, SwiGLU MLP, RoPE,
`PreTrainedModel`, `GenerationMixin`, `DynamicCache`); only the SSA attention is written here.

The attention, exactly (shapes `q [B, T, HQ, D]`, `k, v [B, S, HKV, D]`, `G = HQ / HKV`):

* `full`: causal softmax attention.
* `sparse` (block size `BS`, block count `K`): block keys `kbar_j` = mean of `k` over block `j`; for the
  query at position `t` (own block `c = t // BS`) and query head `h`, `p_h[t, j] = softmax_j(q · kbar_j / √D)`
  over the complete blocks `(j + 1) · BS <= t + 1`; the past blocks `j < c` are scored by
  `s[t, j] = Σ_{h in group} p_h[t, j]`; the query attends causally to its own block and the `K − 1`
  best-scoring past blocks (equal scores: lower block index first).

* `elastic` (Elastic Attention): a router per layer picks, from the prompt, for every key/value head of every
  row whether it runs `full` or `sparse` (`HeadRouter`); decoding keeps the prompt's choice (in `SSACache`).

`config.sparse_layers` (None: all) names the layers that run sparse in `sparse` mode, the others full (what
one layer's sparsity costs); `SSAAttention.probe` shows an evaluation each layer's post-RoPE queries and keys.

Why it is written here and not imported from `ssa_kernels`: the exported model must run without our
package, and the reference ops assume a row's positions are its tensor indices `0 … T−1` with no cache. Here
every key and query carries its own position (left padding shifts a row; decoding appends one query to `S`
cached keys), and the block means of complete blocks are kept in the cache (`SSACache`) so a decoding
step scores only the new token. The converter checks this code against the training model; the tests check
it against `ssa_kernels`' reference.

Positions follow `attention_mask` and the cache: a row's first unmasked token is position 0 (left padding),
the mask is 2-D over the cached and the new tokens (as `generate` passes it at every decoding step; without a
mask no row is padded), and it must mark one contiguous run of tokens per row. The new tokens follow the
`cache.get_seq_length()` cached ones, so neither `cache_position` (which transformers no longer passes) nor
`position_ids` (accepted for API compatibility) is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Cache, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from .configuration_ssa import SSAConfig

try:  # the fused kernels, when the training package is installed next to the export (optional)
    import ssa_kernels
    from ssa_kernels.backends import use_triton
except ImportError:
    ssa_kernels = None

# ------------------------------------------------------------------------------------- transformers versions
# The one place that tells the supported transformers versions apart.

CACHE_ARG = (
    "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"
)
"""The KV cache's name as a `forward` argument, an output field and a `generate` input: `cache` in newer
transformers, `past_key_values` in older ones (newer ones still accept it, with a deprecation warning)."""


def cache_argument(cache: Cache | None, kwargs: dict[str, Any]) -> Cache | None:
    """The cache `forward` was given, under either name (the older one arrives in `kwargs` and is removed)."""
    old = kwargs.pop("past_key_values", None)
    if old is None:
        return cache
    if cache is not None:
        raise ValueError("pass the cache once, as `cache` or as `past_key_values`")
    return old


def with_cache(output_class: type, cache: Cache | None, **fields):
    """`output_class(**fields)` with the cache under the installed transformers' field name."""
    return output_class(**fields, **{CACHE_ARG: cache})


# ----------------------------------------------------------------------------------------- SSA attention


def use_fused_kernels(q: torch.Tensor, unpadded_prefill: bool) -> bool:
    """Whether `ssa_attention` runs `ssa_kernels`' fused ops: installed, an unpadded prefill (every key is a
    query of this call, positions `0 … T − 1` in every row) and tensors the Triton kernels take (CUDA)."""
    return unpadded_prefill and ssa_kernels is not None and use_triton("sparse_attention", q)


def padding_offsets(attention_mask: torch.Tensor | None, batch: int, num_keys: int, device) -> torch.Tensor:
    """Left-padding length of every row: `[B]` int64 (zeros without a mask).

    Args:
        attention_mask: `[B, S]` (1 = token, 0 = padding) over the cached and the new tokens, or None.
    """
    if attention_mask is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    if attention_mask.shape != (batch, num_keys):
        raise ValueError(
            f"attention_mask must be 2-D [batch, past + new tokens] = {(batch, num_keys)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.bool()
    offsets = (mask.cumsum(-1) == 0).sum(-1)  # [B]
    index = torch.arange(num_keys, device=device)
    contiguous = (index >= offsets[:, None]) & (index < (offsets + mask.sum(-1))[:, None])
    if not torch.equal(mask, contiguous):
        raise ValueError("attention_mask must mark one contiguous run of tokens per row (left/right padding)")
    return offsets


def block_means(
    k: torch.Tensor, offsets: torch.Tensor, first: int, last: int, block_size: int
) -> torch.Tensor:
    """Mean key of the blocks `first … last − 1` of every row, in fp32.

    Args:
        k: `[B, S, HKV, D]`; row `b`'s block `j` holds the keys at indices `offsets[b] + j·BS …`.
        offsets: `[B]` left-padding lengths.

    Returns:
        kbar: `[B, last − first, HKV, D]`; a block not complete in a row holds an unused value.
    """
    batch, num_keys = k.shape[:2]
    j = torch.arange(first, last, device=k.device)
    # [B, N, BS] key indices of each block, clamped inside the tensor for incomplete blocks
    index = offsets[:, None, None] + j[None, :, None] * block_size + torch.arange(block_size, device=k.device)
    index = index.clamp(max=num_keys - 1)
    rows = torch.arange(batch, device=k.device)[:, None, None]
    return k[rows, index].float().mean(2)  # [B, N, BS, HKV, D] -> [B, N, HKV, D]


def select_blocks(
    q: torch.Tensor,
    kbar: torch.Tensor,
    q_pos: torch.Tensor,
    block_size: int,
    block_count: int,
    num_key_blocks: int,
    scale: float,
) -> torch.Tensor:
    """Which key blocks each query attends to in sparse mode.

    Args:
        q: `[B, C, HQ, D]` fp32 queries at positions `q_pos [B, C]` (negative: padding).
        kbar: `[B, NB, HKV, D]` block means (complete blocks of each row; others unused).
        num_key_blocks: `NK`, blocks spanned by the keys (`>= NB`, includes a trailing partial block).

    Returns:
        selected: `[B, C, HKV, NK]` bool; the own block and the `K − 1` best past blocks.
    """
    batch, chunk = q.shape[:2]
    num_kv_heads, num_blocks = kbar.shape[2], kbar.shape[1]
    j = torch.arange(num_blocks, device=q.device)
    t = q_pos[..., None]  # [B, C, 1]
    own = t.clamp(min=0) // block_size  # [B, C, 1]
    complete = (j + 1) * block_size <= t + 1  # [B, C, NB]
    past = j < own  # [B, C, NB]
    # [B, C, HKV, G, D] x [B, NB, HKV, D] -> [B, C, HKV, G, NB]
    logits = torch.einsum("bchgd,bnhd->bchgn", q.unflatten(2, (num_kv_heads, -1)), kbar) * scale
    logits = logits.masked_fill(~complete[:, :, None, None, :], float("-inf"))
    p = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a row with no complete block: all zeros
    scores = p.sum(3).masked_fill(~past[:, :, None, :], float("-inf"))  # [B, C, HKV, NB]
    width = min(block_count - 1, num_blocks)
    # a stable descending sort keeps equal scores in block order: the tie rule
    best = scores.sort(dim=-1, descending=True, stable=True).indices[..., :width]  # [B, C, HKV, W]
    rank = torch.arange(width, device=q.device)
    best = best.masked_fill(rank >= own[..., None], num_key_blocks)  # t has exactly t // BS past blocks
    selected = torch.zeros(batch, chunk, num_kv_heads, num_key_blocks + 1, dtype=torch.bool, device=q.device)
    selected.scatter_(-1, best, True)
    selected.scatter_(-1, own[..., None].expand(batch, chunk, num_kv_heads, 1), True)
    return selected[..., :num_key_blocks]  # drop the spare column of unused slots


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor, scale: float
) -> torch.Tensor:
    """Softmax attention with GQA: q `[B, C, HQ, D]`, k/v `[B, S, HKV, D]` (fp32), visible
    `[B, C, HKV or 1, S]` bool -> `[B, C, HQ, D]` (zeros where nothing is visible)."""
    num_kv_heads = k.shape[2]
    # [B, C, HKV, G, D] x [B, S, HKV, D] -> [B, C, HKV, G, S]
    logits = torch.einsum("bchgd,bshd->bchgs", q.unflatten(2, (num_kv_heads, -1)), k) * scale
    logits = logits.masked_fill(~visible[:, :, :, None, :], float("-inf"))
    p = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.einsum("bchgs,bshd->bchgd", p, v).flatten(2, 3)


def ssa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    kbar: torch.Tensor | None,
    block_size: int,
    block_count: int,
    chunk_size: int,
    unpadded_prefill: bool = False,
) -> torch.Tensor:
    """Causal full (`kbar` None) or sparse attention of queries to keys by position, math in fp32.

    An unpadded prefill on CUDA with `ssa_kernels` installed runs its fused ops instead (`use_fused_kernels`:
    Triton selection and sparse attention, cuDNN full attention; they compute in the input dtype with fp32
    accumulation, and select from the means of `k`, which are `kbar` there). Decoding steps, padded batches
    and installs without the package use the code below.

    Args:
        q: `[B, T, HQ, D]` at positions `q_pos [B, T]`.
        k, v: `[B, S, HKV, D]` at positions `k_pos [B, S]` (negative: left padding, never attended).
        kbar: `[B, NB, HKV, D]` block means for sparse mode (see `block_means`), None for full attention.
        chunk_size: queries scored at once (peak memory `[B, chunk, HQ, S]` fp32).
        unpadded_prefill: `S == T`, positions `0 … T − 1` in every row.

    Returns:
        o: `[B, T, HQ, D]` in `q.dtype`.
    """
    if use_fused_kernels(q, unpadded_prefill):
        if kbar is None:
            return ssa_kernels.full_attention(q, k, v)[0]
        indices = ssa_kernels.select_blocks(q, k, block_size, block_count)
        return ssa_kernels.sparse_attention(q, k, v, indices, block_size)[0]
    scale = q.shape[-1] ** -0.5
    qf, kf, vf = q.float(), k.float(), v.float()
    batch, num_keys, num_kv_heads = k.shape[:3]
    num_key_blocks = (num_keys - 1) // block_size + 1
    k_block = k_pos.clamp(min=0) // block_size  # [B, S]
    outputs = []
    for start in range(0, q.shape[1], chunk_size):
        qc, pc = qf[:, start : start + chunk_size], q_pos[:, start : start + chunk_size]
        visible = ((k_pos[:, None, :] >= 0) & (k_pos[:, None, :] <= pc[:, :, None]))[:, :, None]  # [B,C,1,S]
        if kbar is not None:
            selected = select_blocks(qc, kbar, pc, block_size, block_count, num_key_blocks, scale)
            index = k_block[:, None, None, :].expand(batch, qc.shape[1], num_kv_heads, num_keys)
            visible = visible & selected.gather(-1, index)  # [B, C, HKV, S]
        outputs.append(attend(qc, kf, vf, visible, scale))
    return torch.cat(outputs, dim=1).to(q.dtype)


def elastic_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    kbar: torch.Tensor,
    sparse_heads: torch.Tensor,
    block_size: int,
    block_count: int,
    chunk_size: int,
    unpadded_prefill: bool = False,
) -> torch.Tensor:
    """`ssa_attention` with a mode per row and key/value head (the query heads of its group follow it).

    Args:
        sparse_heads: `[B, HKV]`, True / 1 = sparse. Bool (the router's decision): each head's output is
            exactly that of its mode; an unpadded prefill on CUDA runs `ssa_kernels.mixed_attention` (each
            mode only on its heads). Float 0/1 with the router's straight-through gradient (router training):
            `full + m · (sparse − full)` from both modes on every head, so the router learns what its choice
            changes.
        Others as `ssa_attention` (`kbar` always given).
    """
    blocks = (block_size, block_count, chunk_size, unpadded_prefill)
    if sparse_heads.dtype == torch.bool:
        if not sparse_heads.any():
            return ssa_attention(q, k, v, q_pos, k_pos, None, *blocks)
        if sparse_heads.all():
            return ssa_attention(q, k, v, q_pos, k_pos, kbar, *blocks)
        if use_fused_kernels(q, unpadded_prefill):
            return ssa_kernels.mixed_attention(q, k, v, sparse_heads, block_size, block_count)
    full = ssa_attention(q, k, v, q_pos, k_pos, None, *blocks)
    part = ssa_attention(q, k, v, q_pos, k_pos, kbar, *blocks)
    full, part = (o.unflatten(2, (sparse_heads.shape[1], -1)) for o in (full, part))  # [B, T, HKV, G, D]
    m = sparse_heads[:, None, :, None, None]  # [B, 1, HKV, 1, 1]
    out = torch.where(m, part, full) if m.dtype == torch.bool else full + m.to(full.dtype) * (part - full)
    return out.flatten(2, 3)


class HeadRouter(nn.Module):
    """Elastic Attention's router of one layer: full (FA) or sparse (SA) attention per key/value head.

    Its input is the layer's keys before RoPE, mean-pooled per head over the first and the last `pool_tokens`
    tokens of the prompt (boundary pooling) and normalized; a task MLP and then a router MLP (hidden
    `hidden_multiple × head_dim`, shared by the layer's heads) plus a per-head bias give the logits
    `[B, HKV, 2]` of (FA, SA). Training draws a hard Gumbel-softmax sample at `temperature` with a
    straight-through gradient; inference takes the arg-max.
    """

    def __init__(self, head_dim: int, num_kv_heads: int, pool_tokens: int, hidden_multiple: int):
        super().__init__()
        hidden = hidden_multiple * head_dim
        self.pool_tokens = pool_tokens
        self.task = nn.Sequential(nn.Linear(head_dim, hidden), nn.SiLU(), nn.Linear(hidden, head_dim))
        self.route = nn.Sequential(nn.Linear(head_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        self.head_bias = nn.Embedding(num_kv_heads, 2)  # an Embedding: transformers initializes it
        self.temperature = 1.0  # of the Gumbel-softmax; set by the router's training schedule

    def pool(self, k: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
        """Boundary pooling: k `[B, T, HKV, D]` at positions `q_pos [B, T]` (negative: padding) ->
        `[B, HKV, D]` fp32, layer-normed (the router sees the keys' direction, not their scale)."""
        length = q_pos.max(1).values + 1  # [B]
        near = (q_pos >= 0) & ((q_pos < self.pool_tokens) | (q_pos >= (length - self.pool_tokens)[:, None]))
        weight = near.float() / near.sum(1, keepdim=True).clamp(min=1)  # [B, T]
        pooled = torch.einsum("bt,bthd->bhd", weight, k.float())
        return F.layer_norm(pooled, pooled.shape[-1:])

    def forward(self, k: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
        """Logits `[B, HKV, 2]` (FA, SA) in fp32 from the prompt's keys (see `pool`)."""
        h = self.pool(k, q_pos).to(self.head_bias.weight.dtype)
        return (self.route(self.task(h)) + self.head_bias.weight).float()

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """`[B, HKV]` sparse or not: bool arg-max in eval mode; in training a hard Gumbel-softmax sample,
        0/1 floats whose gradient is that of the soft sample (straight-through), the logits kept in
        `last_logits` (the trainer's penalty on their gap)."""
        if not self.training:
            return logits[..., 1] > logits[..., 0]
        self.last_logits = logits
        return F.gumbel_softmax(logits, tau=self.temperature, hard=True)[..., 1]


class SSACache(DynamicCache):
    """transformers' `DynamicCache` (keys/values) plus, per layer, the means of the complete key blocks.

    A decoding step computes the means of the blocks that its new keys complete and reuses the others.
    Anything that rearranges the cache (beam reordering, cropping) drops the means; they are then
    recomputed from the cached keys, which gives the same values. In elastic mode it also keeps the head
    modes the routers chose for the prompt, `head_modes [L, B, HKV]` bool, which every decoding step uses.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # layer -> (block_size, offsets [B], number of keys, means [B, NB, HKV, D])
        self.block_means: dict[int, tuple[int, torch.Tensor, int, torch.Tensor]] = {}
        self.head_modes: torch.Tensor | None = None

    def means(self, layer_idx: int, k: torch.Tensor, offsets: torch.Tensor, num_new: int, block_size: int):
        """Block means `[B, NB, HKV, D]` of all keys `k [B, S, HKV, D]` after `num_new` were appended."""
        num_keys = k.shape[1]
        last = int((num_keys - offsets.min()) // block_size)  # blocks complete in the least padded row
        first, kept = 0, None
        entry = self.block_means.get(layer_idx)
        if entry is not None:
            size, old_offsets, old_keys, old_means = entry
            if size == block_size and old_keys == num_keys - num_new and torch.equal(old_offsets, offsets):
                # blocks complete in every row before this step are reused
                first = int(((old_keys - offsets).clamp(min=0) // block_size).min())
                kept = old_means[:, :first]
        fresh = block_means(k, offsets, first, last, block_size)
        kbar = fresh if kept is None else torch.cat([kept, fresh], dim=1)
        self.block_means[layer_idx] = (block_size, offsets, num_keys, kbar)
        return kbar

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self.block_means.clear()
        if self.head_modes is not None:
            self.head_modes = self.head_modes[:, beam_idx.to(self.head_modes.device)]

    def crop(self, tokens_to_remove: int):
        super().crop(tokens_to_remove)
        self.block_means.clear()

    def batch_repeat_interleave(self, repeats: int):
        super().batch_repeat_interleave(repeats)
        self.block_means.clear()
        if self.head_modes is not None:
            self.head_modes = self.head_modes.repeat_interleave(repeats, dim=1)

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        self.block_means.clear()
        if self.head_modes is not None:
            self.head_modes = self.head_modes[:, indices]

    def reset(self):
        super().reset()
        self.block_means.clear()
        self.head_modes = None


# ----------------------------------------------------------------------------------------- the model


Probe = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""`SSAAttention.probe`: called as `probe(q, k, v, q_pos, k_pos)` with what the layer attends with."""


class SSAAttention(nn.Module):
    """GQA self-attention with RoPE, SSA full/sparse attention and the per-head sigmoid output gate.

    `probe` (None, or a `Probe` that an evaluation sets) is called in every forward with the post-RoPE queries
    `q [B, T, HQ, D]`, the keys and values attended to `k, v [B, S, HKV, D]` (the cache's included) and their
    positions `q_pos [B, T]`, `k_pos [B, S]`, before the attention runs; it observes and changes nothing.
    """

    def __init__(self, config: SSAConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        # g = sigmoid(W_g x): one gate per head on the attention output (NSA / released SSA models)
        self.gate_proj = nn.Linear(hidden, self.num_heads, bias=False) if config.output_gate else None
        self.router = (
            HeadRouter(self.head_dim, self.num_kv_heads, **config.router)
            if config.router is not None
            else None
        )
        self.probe: Probe | None = None

    @property
    def mode(self) -> str:
        """The attention this layer runs: the config's `inference_mode`, except `full` in sparse mode for a
        layer that `sparse_layers` does not list."""
        cfg = self.config
        if cfg.inference_mode == "sparse" and cfg.sparse_layers is not None:
            return "sparse" if self.layer_idx in cfg.sparse_layers else "full"
        return cfg.inference_mode

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
        offsets: torch.Tensor,
        cache: Cache | None,
        unpadded_prefill: bool,
        head_modes: list[torch.Tensor | None],
    ) -> torch.Tensor:
        """x `[B, T, hidden]` (normed), RoPE `cos/sin [B, T, D]`, positions `q_pos [B, T]`, `k_pos [B, S]`;
        `unpadded_prefill`: see `ssa_attention`; `head_modes`: per layer, elastic mode's
        `[B, HKV]` sparse heads, None where this layer's router is to decide (it fills the entry in)."""
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, HQ, T, D]
        k = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cfg, mode = self.config, self.mode
        if mode == "elastic" and head_modes[self.layer_idx] is None:
            head_modes[self.layer_idx] = self.router.decide(self.router(k.transpose(1, 2), q_pos))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # [B, HKV, S, D]
            if k.shape[2] != k_pos.shape[1]:
                raise ValueError(
                    f"{type(cache).__name__} returned {k.shape[2]} keys for {k_pos.shape[1]} tokens: SSA "
                    "attends to keys by position and needs a cache that keeps exactly the tokens seen "
                    "(SSACache or DynamicCache), not a fixed-size one"
                )
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, T or S, heads, D]
        if self.probe is not None:
            self.probe(q, k, v, q_pos, k_pos)
        kbar = None
        if mode != "full":
            if isinstance(cache, SSACache):
                kbar = cache.means(self.layer_idx, k, offsets, length, cfg.block_size)
            else:
                last = int((k.shape[1] - offsets.min()) // cfg.block_size)
                kbar = block_means(k, offsets, 0, last, cfg.block_size)
        blocks = (cfg.block_size, cfg.block_count, cfg.attention_chunk_size, unpadded_prefill)
        if mode == "elastic":
            out = elastic_attention(q, k, v, q_pos, k_pos, kbar, head_modes[self.layer_idx], *blocks)
        else:
            out = ssa_attention(q, k, v, q_pos, k_pos, kbar, *blocks)  # [B, T, HQ, D]
        if self.gate_proj is not None:
            out = (out * torch.sigmoid(self.gate_proj(x).float()).unsqueeze(-1)).to(x.dtype)
        return self.o_proj(out.reshape(batch, length, -1))


class SSADecoderLayer(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + SwiGLU(norm(x))."""

    def __init__(self, config: SSAConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = SSAAttention(config, layer_idx)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x: torch.Tensor, *attention_args) -> torch.Tensor:
        """x `[B, T, hidden]` -> `[B, T, hidden]`; `attention_args` as `SSAAttention.forward`."""
        x = x + self.self_attn(self.input_layernorm(x), *attention_args)
        return x + self.mlp(self.post_attention_layernorm(x))


class SSAPreTrainedModel(PreTrainedModel):
    config_class = SSAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules: ClassVar[list[str]] = ["SSADecoderLayer"]

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """`generate` leaves the cache to `forward`, which creates an `SSACache` (block means included)."""
        return False


class SSAModel(SSAPreTrainedModel):
    """Embeddings, decoder layers and the final norm; returns the last hidden state."""

    def __init__(self, config: SSAConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SSADecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        head_modes: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """input_ids `[B, T]` (or inputs_embeds `[B, T, hidden]`), attention_mask `[B, past + T]`; the cache
        (`cache`, or `past_key_values` as older transformers name it) is extended in place.

        Elastic mode: `head_modes [L, B, HKV]` bool (True = sparse) fixes every head's mode; without it a
        prefill asks the routers and a decoding step reuses the modes the cache kept from its prefill. The
        modes used are left in `last_head_modes` (per layer `[B, HKV]`; the router's straight-through
        samples while it trains)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        cache = cache_argument(cache, kwargs)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = SSACache()
        past = cache.get_seq_length() if cache is not None else 0
        batch, length = x.shape[:2]
        offsets = padding_offsets(attention_mask, batch, past + length, x.device)
        k_pos = torch.arange(past + length, device=x.device)[None] - offsets[:, None]  # [B, S]
        q_pos = k_pos[:, past:]  # [B, T]
        unpadded_prefill = past == 0 and not bool(offsets.any())  # once per forward, not per layer
        modes = self.elastic_modes(head_modes, cache, past, batch)
        cos, sin = self.rotary_emb(x, q_pos.clamp(min=0))
        for layer in self.layers:
            x = layer(x, cos, sin, q_pos, k_pos, offsets, cache, unpadded_prefill, modes)
        x = self.norm(x)
        if self.config.inference_mode == "elastic":
            self.last_head_modes = modes
            if cache is not None and cache.head_modes is None:
                cache.head_modes = torch.stack(modes) > 0.5  # bool decisions, or the STE samples' 0/1
        return with_cache(BaseModelOutputWithPast, cache if use_cache else None, last_hidden_state=x)

    def elastic_modes(
        self, head_modes: torch.Tensor | None, cache: Cache | None, past: int, batch: int
    ) -> list[torch.Tensor | None]:
        """The per-layer head modes a forward starts from (None: the layer's router decides); checks that
        elastic mode has a router, a cache that keeps the modes and modes of the right shape."""
        cfg, layers = self.config, self.config.num_hidden_layers
        if cfg.inference_mode != "elastic":
            return [None] * layers
        if cfg.router is None:
            raise ValueError(
                "inference_mode='elastic' needs a router and this model has none: train one with "
                "`ssa elastic train CONFIG`, or use inference_mode 'full' or 'sparse'"
            )
        if cache is not None and not isinstance(cache, SSACache):
            raise ValueError(
                f"elastic mode decodes with an SSACache (it keeps the prompt's head modes), got "
                f"{type(cache).__name__}; pass no cache and one is created"
            )
        if head_modes is None and past > 0:
            head_modes = cache.head_modes
            if head_modes is None:
                raise ValueError("the cache holds no head modes: it was not filled in elastic mode")
        if head_modes is None:
            return [None] * layers
        expected = (layers, batch, cfg.num_key_value_heads)
        if head_modes.dtype != torch.bool or tuple(head_modes.shape) != expected:
            raise ValueError(
                f"head_modes must be bool [layers, batch, kv heads] = {list(expected)}, "
                f"got {head_modes.dtype} {list(head_modes.shape)}"
            )
        return list(head_modes.to(self.embed_tokens.weight.device).unbind(0))  # given on any device


class SSAForCausalLM(SSAPreTrainedModel, GenerationMixin):
    """SSA decoder with a (tied) language-model head; `generate` uses the KV cache in both modes."""

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SSAConfig):
        super().__init__(config)
        self.model = SSAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        head_modes: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits `[B, T or logits_to_keep, vocab]`; loss: next-token cross-entropy with `labels`. Arguments
        as `SSAModel.forward`."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache_argument(cache, kwargs),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            head_modes=head_modes,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return with_cache(CausalLMOutputWithPast, getattr(out, CACHE_ARG), loss=loss, logits=logits)


__all__ = ["SSACache", "SSAForCausalLM", "SSAModel", "SSAPreTrainedModel"]
