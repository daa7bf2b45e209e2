"""Plain-PyTorch reference of SSA block selection, one function per step: block keys, scores, top-k."""

import torch
import torch.nn.functional as F

from ..utils import QUERY_CHUNK_SIZE, accumulation_dtype, map_query_chunks, softmax_lse


def block_means(k: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean key of every complete block.

    Args:
        k: `[B, T, HKV, D]`.

    Returns:
        kbar: `[B, T // block_size, HKV, D]`; a trailing partial block has no mean (it is never scored).
    """
    num_blocks = k.shape[1] // block_size
    # [B, NB, BS, HKV, D] -> [B, NB, HKV, D]
    return k[:, : num_blocks * block_size].unflatten(1, (num_blocks, block_size)).mean(2)


def block_scores(
    q: torch.Tensor, kbar: torch.Tensor, start: int, block_size: int, scale: float
) -> torch.Tensor:
    """Score of every past block for every query token, summed over the query heads of each kv group.

    Args:
        q: `[B, C, HQ, D]`, the queries at positions `start … start + C - 1`.
        kbar: `[B, NB, HKV, D]`, block means from `block_means`.

    Returns:
        s: `[B, C, HKV, NB]`; for the token at `t = start + i`, `s[b, i, h, j]` sums over the query heads
        `g` of kv head `h` the `softmax_j(q · kbar_j * scale)` over the complete blocks
        (`(j + 1) * block_size <= t + 1`); kept for the past blocks `j < t // block_size`, `-inf` elsewhere.
    """
    num_kv_heads, num_blocks = kbar.shape[2], kbar.shape[1]
    t = torch.arange(start, start + q.shape[1], device=q.device)[:, None]  # [C, 1]
    j = torch.arange(num_blocks, device=q.device)  # [NB]
    complete = (j + 1) * block_size <= t + 1  # [C, NB]
    past = j < t // block_size  # [C, NB]
    # [B, C, HKV, G, D] x [B, NB, HKV, D] -> [B, C, HKV, G, NB]
    logits = torch.einsum("bchgd,bnhd->bchgn", q.unflatten(2, (num_kv_heads, -1)), kbar) * scale
    p, _ = softmax_lse(logits.masked_fill(~complete[:, None, None, :], float("-inf")))
    return p.sum(3).masked_fill(~past[:, None, :], float("-inf"))  # [B, C, HKV, NB]


def top_blocks(scores: torch.Tensor, start: int, block_size: int, block_count: int) -> torch.Tensor:
    """Own block first, then the `block_count - 1` best past blocks.

    Args:
        scores: `[B, C, HKV, NB]` from `block_scores`, for positions `start … start + C - 1`.

    Returns:
        indices: `[B, C, HKV, block_count]` int64. Slot 0 is the own block `t // block_size`; then past blocks
        by descending score, equal scores in ascending block index; `-1` in the slots left when the token has
        fewer than `block_count - 1` past blocks.
    """
    batch, chunk, num_kv_heads, num_blocks = scores.shape
    own = torch.arange(start, start + chunk, device=scores.device) // block_size  # [C]
    width = min(block_count - 1, num_blocks)
    # a stable descending sort keeps equal scores in index order: the tie rule
    best = scores.sort(dim=-1, descending=True, stable=True).indices[..., :width]  # [B, C, HKV, W]
    rank = torch.arange(width, device=scores.device)
    best = best.masked_fill(rank >= own[:, None, None], -1)  # token t has exactly t // BS past blocks
    best = F.pad(best, (0, block_count - 1 - width), value=-1)  # [B, C, HKV, K - 1]
    return torch.cat([own[:, None, None].expand(batch, chunk, num_kv_heads, 1), best], dim=-1)


def _select_chunk(
    start: int,
    q: torch.Tensor,
    kbar: torch.Tensor,
    q_start: int,
    block_size: int,
    block_count: int,
    scale: float,
) -> tuple[torch.Tensor]:
    """q `[B, C, HQ, D]` at positions `q_start + start …`, kbar `[B, NB, HKV, D]` -> (`[B, C, HKV, K]`,)."""
    scores = block_scores(q.to(kbar.dtype), kbar, q_start + start, block_size, scale)
    return (top_blocks(scores, q_start + start, block_size, block_count),)


@torch.no_grad()
def naive_select_blocks_from_means(
    q: torch.Tensor,
    kbar: torch.Tensor,
    q_start: int,
    block_size: int,
    block_count: int,
    scale: float | None = None,
    *,
    chunk_size: int = QUERY_CHUNK_SIZE,
) -> torch.Tensor:
    """Reference of `ssa_kernels.select_blocks_from_means`: queries `[B, R, HQ, D]` at positions
    `q_start … q_start + R − 1` against the block means `kbar [B, NB, HKV, D]` of the sequence ->
    `[B, R, HKV, K]` int32 (the rows of `naive_select_blocks` for those positions)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    args = (kbar, q_start, block_size, block_count, scale)
    (indices,) = map_query_chunks(_select_chunk, chunk_size, (q,), *args)
    return indices.to(torch.int32)


@torch.no_grad()
def naive_select_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    block_count: int,
    scale: float | None = None,
    *,
    chunk_size: int = QUERY_CHUNK_SIZE,
) -> torch.Tensor:
    """Reference of `ssa_kernels.select_blocks` (same arguments and result), math in fp32.

    Args:
        q: `[B, T, HQ, D]`.
        k: `[B, T, HKV, D]`.
        chunk_size: query positions scored at once; peak memory holds one `[B, chunk, HQ, T // BS]` tensor.

    Returns:
        indices: `[B, T, HKV, block_count]` int32.
    """
    kbar = block_means(k.to(accumulation_dtype(k)), block_size)  # [B, NB, HKV, D]
    return naive_select_blocks_from_means(q, kbar, 0, block_size, block_count, scale, chunk_size=chunk_size)
