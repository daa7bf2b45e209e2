"""Plain-PyTorch reference of mixed-head attention: both modes on every head, then a pick per kv head."""

import torch

from ..full_attention.naive import naive_full_attention
from ..select_blocks.naive import naive_select_blocks
from ..sparse_attention.naive import naive_sparse_attention
from ..utils import check_positive, check_qkv, check_scale


def check_mixed_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sparse_heads: torch.Tensor,
    block_size: int,
    block_count: int,
    scale: float | None,
) -> None:
    """Raise ValueError unless the arguments of `mixed_attention` fit together.

    A `sparse_heads` of the wrong shape would broadcast silently in the reference's `torch.where`, hence the
    exact `[B, HKV]` check.
    """
    check_qkv(q, k, v, same_length=True)
    check_positive(block_size=block_size, block_count=block_count)
    check_scale(scale)  # the sparse mode's selection needs scale > 0, whichever heads use it
    if not isinstance(sparse_heads, torch.Tensor) or sparse_heads.dtype != torch.bool:
        kind = sparse_heads.dtype if isinstance(sparse_heads, torch.Tensor) else type(sparse_heads).__name__
        raise ValueError(f"sparse_heads must be a bool tensor (True = sparse), got {kind}")
    expected = (q.shape[0], k.shape[2])
    if tuple(sparse_heads.shape) != expected:
        raise ValueError(
            f"sparse_heads must be [B, HKV] = [{expected[0]}, {expected[1]}] (one mode per sequence and kv "
            f"head), got shape {tuple(sparse_heads.shape)}"
        )
    if sparse_heads.device != q.device:
        raise ValueError(f"sparse_heads is on {sparse_heads.device} but q on {q.device}; move it to q's")


def pick_heads(o_full: torch.Tensor, o_sparse: torch.Tensor, sparse_heads: torch.Tensor) -> torch.Tensor:
    """Per sequence and kv head, the sparse output where `sparse_heads` is True, else the full one.

    Args:
        o_full, o_sparse: `[B, T, HQ, D]`, both computed on every head.
        sparse_heads: `[B, HKV]` bool; kv head `h` covers query heads `h * G … (h + 1) * G − 1`.

    Returns:
        o: `[B, T, HQ, D]`.
    """
    kv_heads = sparse_heads.shape[1]
    pick = sparse_heads[:, None, :, None, None]  # [B, HKV] -> [B, 1, HKV, 1, 1]
    # [B, T, HQ, D] -> [B, T, HKV, G, D] -> [B, T, HQ, D]
    o = torch.where(pick, o_sparse.unflatten(2, (kv_heads, -1)), o_full.unflatten(2, (kv_heads, -1)))
    return o.flatten(2, 3)


def naive_mixed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sparse_heads: torch.Tensor,
    block_size: int,
    block_count: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Reference of `ssa_kernels.mixed_attention` (same arguments and result), math in fp32 (fp64 for fp64).

    Computes causal full attention and SSA sparse attention (`naive_select_blocks` + `naive_sparse_attention`)
    on every head, then keeps each kv head's output of its own mode: twice the work of the fast path, and
    nothing shared between the modes, so it is the oracle.

    Args:
        q: `[B, T, HQ, D]`.
        k, v: `[B, T, HKV, D]`, `HQ % HKV == 0`.
        sparse_heads: `[B, HKV]` bool, True = that kv head (its `G = HQ // HKV` query heads) of that
            sequence runs sparse, False = full.
        block_size, block_count: the sparse mode's blocks (`select_blocks`).
        scale: logit scale > 0, default `1 / sqrt(D)`.

    Returns:
        o: `[B, T, HQ, D]` in `q.dtype`.
    """
    check_mixed_inputs(q, k, v, sparse_heads, block_size, block_count, scale)
    o_full, _ = naive_full_attention(q, k, v, True, scale)
    indices = naive_select_blocks(q, k, block_size, block_count, scale)
    o_sparse, _ = naive_sparse_attention(q, k, v, indices, block_size, scale)
    return pick_heads(o_full, o_sparse, sparse_heads)
