"""Plain-PyTorch reference of SSA sparse attention: attention to all keys, masked to the selected blocks."""

import torch

from ..utils import QUERY_CHUNK_SIZE, accumulation_dtype, attend, causal_mask, map_query_chunks


def selected_keys(indices: torch.Tensor, start: int, block_size: int, num_keys: int) -> torch.Tensor:
    """Which keys each query may see: those of its listed blocks, up to and including its own position.

    Args:
        indices: `[B, C, HKV, K]` block indices (`-1` or any negative = unused) of the queries at
            `start … start + C - 1`; blocks beyond the sequence are ignored.

    Returns:
        visible: `[B, C, HKV, S]` bool, `S = num_keys`.
    """
    num_blocks = -(-num_keys // block_size)
    slots = indices.long()
    slots = slots.where((slots >= 0) & (slots < num_blocks), num_blocks)  # unused -> a spare column
    listed = torch.zeros(*slots.shape[:3], num_blocks + 1, dtype=torch.bool, device=indices.device)
    listed.scatter_(-1, slots, True)  # [B, C, HKV, NB + 1]
    in_blocks = listed[..., :num_blocks].repeat_interleave(block_size, dim=-1)[..., :num_keys]
    return in_blocks & causal_mask(start, indices.shape[1], num_keys, indices.device)


def _sparse_chunk(
    start: int,
    q: torch.Tensor,
    indices: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    scale: float,
    q_start: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q `[B, C, HQ, D]`, indices `[B, C, HKV, K]`, k, v `[B, TK, HKV, D]` ->
    o `[B, C, HQ, D]`, lse `[B, C, HQ]`;
    (the query rows `start … start + C - 1`, at positions `q_start + start …`)."""
    return attend(q, k, v, selected_keys(indices, q_start + start, block_size, k.shape[1]), scale)


def naive_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    block_size: int,
    scale: float | None = None,
    q_start: int = 0,
    *,
    chunk_size: int = QUERY_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of `ssa_kernels.sparse_attention` (same arguments and results), math in fp32.

    Dense scores masked to the selected blocks: O(T^2) work, but plain matrix products and no gathers, which
    is what a CPU runs fastest at training lengths; repeated block indices are harmless.

    Args:
        q: `[B, T, HQ, D]`.
        k, v: `[B, TK, HKV, D]`.
        indices: `[B, T, HKV, K]` int32/int64 block indices, `-1` = unused.
        q_start: the position of query row 0 among the keys.
        chunk_size: query positions attended at once; each chunk scores `[B, chunk, HQ, T]` and, when there
            are several chunks, is recomputed in the backward.

    Returns:
        o: `[B, T, HQ, D]` in `q.dtype`.
        lse: `[B, T, HQ]` fp32 (fp64 for fp64 inputs).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = k.to(accumulation_dtype(q)), v.to(accumulation_dtype(q))
    return map_query_chunks(_sparse_chunk, chunk_size, (q, indices), k, v, block_size, scale, q_start)
