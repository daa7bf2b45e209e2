"""Plain-PyTorch reference of full softmax attention with GQA, causal or not."""

import torch

from ..utils import QUERY_CHUNK_SIZE, accumulation_dtype, map_query_chunks, softmax_lse


def _full_chunk(
    start: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q `[B, C, HQ, D]`, k/v `[B, S, HKV, D]` -> o `[B, C, HQ, D]`, lse `[B, C, HQ]`."""
    num_kv_heads = k.shape[2]
    # [B, C, HKV, G, D] x [B, S, HKV, D] -> [B, C, HKV, G, S]
    logits = torch.einsum("bchgd,bshd->bchgs", q.to(k.dtype).unflatten(2, (num_kv_heads, -1)), k) * scale
    if causal:
        t = torch.arange(start, start + q.shape[1], device=q.device)[:, None]  # [C, 1]
        future = torch.arange(k.shape[1], device=q.device) > t  # [C, S]
        logits = logits.masked_fill(future[:, None, None, :], float("-inf"))
    p, lse = softmax_lse(logits)
    o = torch.einsum("bchgs,bshd->bchgd", p, v)  # [B, C, HKV, G, D]
    return o.flatten(2, 3).to(q.dtype), lse.flatten(2, 3)


def naive_full_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    *,
    chunk_size: int = QUERY_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of `ssa_kernels.full_attention` (same arguments and results), math in fp32.

    Args:
        q: `[B, TQ, HQ, D]`.
        k, v: `[B, TK, HKV, D]`.
        chunk_size: query positions attended at once; each chunk scores `[B, chunk, HQ, TK]` and is recomputed
            in the backward.

    Returns:
        o: `[B, TQ, HQ, D]` in `q.dtype`.
        lse: `[B, TQ, HQ]` fp32 (fp64 for fp64 inputs).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = k.to(accumulation_dtype(q)), v.to(accumulation_dtype(q))
    return map_query_chunks(_full_chunk, chunk_size, (q,), k, v, causal, scale)
