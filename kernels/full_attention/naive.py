"""Plain-PyTorch reference of full softmax attention with GQA, causal or not."""

import torch

from ..utils import QUERY_CHUNK_SIZE, accumulation_dtype, attend, causal_mask, map_query_chunks


def _full_chunk(
    start: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q `[B, C, HQ, D]`, k/v `[B, S, HKV, D]` -> o `[B, C, HQ, D]`, lse `[B, C, HQ]`."""
    visible = causal_mask(start, q.shape[1], k.shape[1], q.device) if causal else None
    return attend(q, k, v, visible, scale)


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
        chunk_size: query positions attended at once; each chunk scores `[B, chunk, HQ, TK]` and, when there
            are several chunks, is recomputed in the backward.

    Returns:
        o: `[B, TQ, HQ, D]` in `q.dtype`.
        lse: `[B, TQ, HQ]` fp32 (fp64 for fp64 inputs).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = k.to(accumulation_dtype(q)), v.to(accumulation_dtype(q))
    return map_query_chunks(_full_chunk, chunk_size, (q,), k, v, causal, scale)
