"""Mixed-head attention: every (sequence, kv head) pair runs its own mode, causal full or SSA sparse.

For a router that decides per sequence and kv head which attention a head pays for. The fast path runs two
launches over head subsets, each mode's public op on the rows of the heads that chose it: the tuned
kernels are reused as they are. (One kernel reading a per-head mode could save the gather and scatter
later; it would duplicate both kernels' tuning.)
"""

import torch

from ..full_attention import full_attention
from ..select_blocks import select_blocks
from ..sparse_attention import sparse_attention
from .naive import check_mixed_inputs, naive_mixed_attention

__all__ = ["mixed_attention", "naive_mixed_attention"]


def _sparse_mode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, block_count: int, scale: float | None
) -> torch.Tensor:
    """SSA sparse attention on every head: `select_blocks` then `sparse_attention`; o `[B, T, HQ, D]`."""
    indices = select_blocks(q, k, block_size, block_count, scale)
    return sparse_attention(q, k, v, indices, block_size, scale)[0]


def mixed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sparse_heads: torch.Tensor,
    block_size: int,
    block_count: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention where each sequence's kv head (with its `G` query heads) runs full or sparse.

    Differentiable w.r.t. `q`, `k`, `v`. Each mode runs once, on only the heads that use it: the (b, kv head)
    pairs are rows `[N, T, G, D]`, gathered per mode, passed to `full_attention` or to `select_blocks` +
    `sparse_attention` (Triton / SDPA on CUDA, the references on CPU), and scattered back. A batch in one
    mode calls that op directly, without the gather. Sizing the two launches reads the number of sparse
    heads on the host (one device sync).

    Args:
        q: `[B, T, HQ, D]`.
        k, v: `[B, T, HKV, D]`, `HQ % HKV == 0`; query head `h` uses kv head `h // G`, `G = HQ // HKV`.
        sparse_heads: `[B, HKV]` bool on q's device, True = sparse, False = full.
        block_size, block_count: the sparse mode's blocks per token (`select_blocks`).
        scale: logit scale > 0, default `1 / sqrt(D)`.

    Returns:
        o: `[B, T, HQ, D]` in `q.dtype`.
    """
    check_mixed_inputs(q, k, v, sparse_heads, block_size, block_count, scale)
    num_sparse = int(sparse_heads.sum())
    if num_sparse == 0:
        return full_attention(q, k, v, True, scale)[0]
    if num_sparse == sparse_heads.numel():
        return _sparse_mode(q, k, v, block_size, block_count, scale)
    kv_heads = k.shape[2]
    rows = sparse_heads.flatten().argsort(stable=True)  # [B * HKV] row ids b * HKV + h, the full rows first
    modes = rows.split([rows.numel() - num_sparse, num_sparse])  # (full rows, sparse rows)
    q_heads = q.unflatten(2, (kv_heads, -1))  # [B, T, HQ, D] -> [B, T, HKV, G, D]
    o_heads = torch.empty_like(q_heads)  # [B, T, HKV, G, D], every row written below
    for sparse, mode_rows in zip((False, True), modes, strict=True):
        b, h = mode_rows // kv_heads, mode_rows % kv_heads  # [N] each
        rows_q = q_heads[b, :, h]  # [N, T, G, D]
        rows_k, rows_v = k[b, :, h, None], v[b, :, h, None]  # [N, T, 1, D]
        if sparse:
            o_rows = _sparse_mode(rows_q, rows_k, rows_v, block_size, block_count, scale)
        else:
            o_rows = full_attention(rows_q, rows_k, rows_v, True, scale)[0]
        o_heads[b, :, h] = o_rows  # [N, T, G, D] -> [B, T, HKV, G, D]
    return o_heads.flatten(2, 3)  # [B, T, HQ, D]
