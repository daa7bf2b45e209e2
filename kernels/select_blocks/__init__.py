"""SSA block selection: which key blocks each query token attends to in sparse attention."""

import torch

from ..backends import HAS_TRITON, use_triton
from ..utils import check_positive, check_qkv
from .naive import naive_select_blocks

if HAS_TRITON:
    from .parallel import parallel_select_blocks

__all__ = ["naive_select_blocks", "select_blocks"]


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
        scale: logit scale, default `1 / sqrt(D)`.

    Returns:
        indices: `[B, T, HKV, K]` int32 block indices, `-1` = unused slot.
    """
    check_qkv(q, k, None, same_length=True)
    check_positive(block_size=block_size, block_count=block_count)
    # Dispatch point: Triton on CUDA (fp16/bf16/fp32); the reference on CPU and where the kernel cannot.
    if use_triton("select_blocks", q):
        return parallel_select_blocks(q, k, block_size, block_count, scale)
    return naive_select_blocks(q, k, block_size, block_count, scale)
