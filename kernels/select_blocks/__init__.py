"""SSA block selection: which key blocks each query token attends to in sparse attention."""

import torch
from torch.profiler import record_function

from ..backends import HAS_TRITON, use_triton
from ..utils import check_positive, check_qkv, check_scale
from .naive import naive_select_blocks, naive_select_blocks_from_means

if HAS_TRITON:
    from .parallel import parallel_select_blocks, parallel_select_blocks_from_means

__all__ = [
    "naive_select_blocks",
    "naive_select_blocks_from_means",
    "select_blocks",
    "select_blocks_from_means",
]


def select_blocks(
    q: torch.Tensor, k: torch.Tensor, block_size: int, block_count: int, scale: float | None = None
) -> torch.Tensor:
    """Pick `block_count` key blocks per query token and kv head (no gradient).

    Rule (DESIGN.md, "The method, exactly"): block keys are the means of `k` over complete blocks of
    `block_size` tokens; for token `t` (own block `c = t // block_size`) and query head `h`,
    `p_h[t, j] = softmax_j(q[t, h] · kbar_j * scale)` over the complete blocks with
    `(j + 1) * block_size <= t + 1`; past block `j < c` scores `s[t, j] = sum of p_h[t, j]` over the query
    heads of the kv group. Slot 0 holds `c`; slots 1… the highest-scoring past blocks in descending score,
    **equal scores ordered by ascending block index**; slots beyond the `c` past blocks hold `-1`.

    Args:
        q: `[B, T, HQ, D]`.
        k: `[B, T, HKV, D]`, `HQ % HKV == 0`; query head `h` belongs to kv head `h // (HQ // HKV)`.
        block_size: tokens per block (`BS`).
        block_count: blocks per token, own block included (`K`).
        scale: logit scale > 0, default `1 / sqrt(D)`.

    Returns:
        indices: `[B, T, HKV, K]` int32 block indices, `-1` = unused slot.
    """
    check_qkv(q, k, None, same_length=True)
    check_positive(block_size=block_size, block_count=block_count)
    check_scale(scale)
    # Dispatch point: Triton on CUDA (fp16/bf16/fp32); the reference on CPU and where the kernel cannot.
    with record_function("attention.selection"):  # a profiler range (tools/bench_train.py); free otherwise
        if use_triton("select_blocks", q):
            return parallel_select_blocks(q, k, block_size, block_count, scale)
        return naive_select_blocks(q, k, block_size, block_count, scale)


def select_blocks_from_means(
    q: torch.Tensor,
    kbar: torch.Tensor,
    q_start: int,
    block_size: int,
    block_count: int,
    scale: float | None = None,
) -> torch.Tensor:
    """`select_blocks` for a run of queries against given block means (context parallelism: a rank's share
    of the queries, the all-gathered means of the whole sequence).

    Args:
        q: `[B, R, HQ, D]`, the queries at positions `q_start … q_start + R − 1`.
        kbar: `[B, NB, HKV, D]` fp32 means of the complete key blocks (`block_means`), at least every block
            before the last query.

    Returns:
        indices: `[B, R, HKV, K]` int32 global block ids: the rows of `select_blocks` on the whole sequence.
    """
    check_positive(block_size=block_size, block_count=block_count)
    check_scale(scale)
    if q.shape[0] != kbar.shape[0] or q.shape[3] != kbar.shape[3] or q.shape[2] % kbar.shape[2]:
        raise ValueError(
            f"q {tuple(q.shape)} and kbar {tuple(kbar.shape)} do not match ([B, R, HQ, D], [B, NB, HKV, D])"
        )
    if kbar.shape[1] < (q_start + q.shape[1] - 1) // block_size:
        raise ValueError(
            f"kbar holds {kbar.shape[1]} blocks; queries up to {q_start + q.shape[1] - 1} need more"
        )
    with record_function("attention.selection"):
        if use_triton("select_blocks", q):
            scale = q.shape[-1] ** -0.5 if scale is None else scale
            return parallel_select_blocks_from_means(
                q.contiguous(), kbar, q_start, block_size, block_count, scale
            )
        return naive_select_blocks_from_means(q, kbar, q_start, block_size, block_count, scale)
