"""Plain-PyTorch reference of SSA sparse attention: gather the selected blocks, attend causally."""

import torch

from ..utils import QUERY_CHUNK_SIZE, accumulation_dtype, map_query_chunks, softmax_lse


def selected_tokens(indices: torch.Tensor, start: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key positions of the selected blocks and which of them a query may see.

    Args:
        indices: `[B, C, HKV, K]` block indices (`-1` = unused) of the queries at `start … start + C - 1`.

    Returns:
        tokens: `[B, C, HKV, K * BS]` int64 key positions, `0` where not visible (safe to gather).
        visible: `[B, C, HKV, K * BS]` bool, the position exists in a listed block and is `<= t`.
    """
    t = torch.arange(start, start + indices.shape[1], device=indices.device)[:, None, None]  # [C, 1, 1]
    offsets = torch.arange(block_size, device=indices.device)
    # [B, C, HKV, K, BS] -> [B, C, HKV, K * BS]; an unused slot (-1) yields negative positions
    tokens = (indices.long()[..., None] * block_size + offsets).flatten(3)
    visible = (tokens >= 0) & (tokens <= t)
    return tokens.where(visible, 0), visible


def _sparse_chunk(
    start: int,
    q: torch.Tensor,
    indices: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse attention of the queries at positions `start … start + C - 1`.

    q `[B, C, HQ, D]`, indices `[B, C, HKV, K]`, k/v `[B, T, HKV, D]` -> o `[B, C, HQ, D]`, lse `[B, C, HQ]`.
    """
    batch, _, num_kv_heads, _ = indices.shape
    tokens, visible = selected_tokens(indices, start, block_size)  # [B, C, HKV, N]
    b = torch.arange(batch, device=k.device)[:, None, None, None]
    h = torch.arange(num_kv_heads, device=k.device)[None, None, :, None]
    k_sel, v_sel = k[b, tokens, h], v[b, tokens, h]  # [B, C, HKV, N, D]
    # [B, C, HKV, G, D] x [B, C, HKV, N, D] -> [B, C, HKV, G, N]
    logits = torch.einsum("bchgd,bchnd->bchgn", q.to(k.dtype).unflatten(2, (num_kv_heads, -1)), k_sel) * scale
    p, lse = softmax_lse(logits.masked_fill(~visible[:, :, :, None, :], float("-inf")))
    o = torch.einsum("bchgn,bchnd->bchgd", p, v_sel)  # [B, C, HKV, G, D]
    return o.flatten(2, 3).to(q.dtype), lse.flatten(2, 3)


def naive_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    block_size: int,
    scale: float | None = None,
    *,
    chunk_size: int = QUERY_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of `ssa_kernels.sparse_attention` (same arguments and results), math in fp32.

    Args:
        q: `[B, T, HQ, D]`.
        k, v: `[B, T, HKV, D]`.
        indices: `[B, T, HKV, K]` int32/int64 block indices, `-1` = unused.
        chunk_size: query positions attended at once; each chunk gathers `[B, chunk, HKV, K * BS, D]` keys
            and values and is recomputed in the backward.

    Returns:
        o: `[B, T, HQ, D]` in `q.dtype`.
        lse: `[B, T, HQ]` fp32 (fp64 for fp64 inputs).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = k.to(accumulation_dtype(q)), v.to(accumulation_dtype(q))
    return map_query_chunks(_sparse_chunk, chunk_size, (q, indices), k, v, block_size, scale)
