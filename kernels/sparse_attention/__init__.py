"""SSA sparse attention: causal attention restricted to the key blocks chosen by `select_blocks`."""

import torch

from ..backends import HAS_TRITON, use_triton
from ..utils import check_positive, check_qkv
from .naive import naive_sparse_attention

if HAS_TRITON:
    from .parallel import parallel_sparse_attention

__all__ = ["naive_sparse_attention", "sparse_attention"]


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    block_size: int,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query token to the tokens of its selected blocks, causally.

    Query token `t`, head `h` attends to every key position `s <= t` inside the blocks
    `indices[b, t, h // G, :]` (`G = HQ // HKV`; negative entries are ignored; the own block is partial).
    The non-negative entries of a row must be distinct, as `select_blocks` returns them.
    Differentiable w.r.t. `q`, `k`, `v`. A row that sees no key gets `o = 0`, `lse = -inf`.

    Args:
        q: `[B, T, HQ, D]`.
        k, v: `[B, T, HKV, D]`, `HQ % HKV == 0`.
        indices: `[B, T, HKV, K]` int32 (or int64) block indices, `-1` = unused.
        block_size: tokens per block, as given to `select_blocks`.
        scale: logit scale, default `1 / sqrt(D)`.

    Returns:
        o: `[B, T, HQ, D]` in `q.dtype`.
        lse: `[B, T, HQ]` fp32 natural log-sum-exp of the scaled logits (fp64 for fp64 inputs).
    """
    check_qkv(q, k, v, same_length=True)
    check_positive(block_size=block_size)
    if indices.ndim != 4 or indices.shape[:3] != k.shape[:3] or indices.shape[3] < 1:
        raise ValueError(
            f"indices must be [B, T, HKV, K] = [{', '.join(map(str, k.shape[:3]))}, K >= 1], "
            f"got shape {tuple(indices.shape)}"
        )
    if indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"indices must be int32 (or int64), got {indices.dtype}")
    # Dispatch point: Triton on CUDA (fp16/bf16/fp32); the reference on CPU and where the kernel cannot.
    if use_triton("sparse_attention", q):
        return parallel_sparse_attention(q, k, v, indices, block_size, scale)
    return naive_sparse_attention(q, k, v, indices, block_size, scale)
