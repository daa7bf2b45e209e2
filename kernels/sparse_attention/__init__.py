"""SSA sparse attention: causal attention restricted to the key blocks chosen by `select_blocks`.

Besides the differentiable op, the backend API that ring attention differentiates with (as for
`full_attention`): `sparse_attention_backward` gives dq, dk, dv from the (possibly merged) o and lse.
"""

import torch

from ..backends import HAS_TRITON, use_triton
from ..full_attention.naive import naive_attention_backward
from ..utils import check_positive, check_qkv
from .naive import naive_sparse_attention, selected_keys

if HAS_TRITON:
    from .parallel import parallel_sparse_attention, sparse_attention_bwd

__all__ = ["naive_sparse_attention", "sparse_attention", "sparse_attention_backward"]


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, block_size: int, q_start: int
) -> None:
    """Raise ValueError unless the arguments of `sparse_attention` fit together."""
    if q_start < 0:
        raise ValueError(f"q_start must be >= 0, got {q_start}")
    check_qkv(q, k, v, same_length=q_start == 0)
    check_positive(block_size=block_size)
    rows = (*q.shape[:2], k.shape[2])
    if indices.ndim != 4 or indices.shape[:3] != rows or indices.shape[3] < 1:
        raise ValueError(
            f"indices must be [B, T, HKV, K] = [{', '.join(map(str, rows))}, K >= 1], "
            f"got shape {tuple(indices.shape)}"
        )
    if indices.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"indices must be int32 (or int64), got {indices.dtype}")


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    block_size: int,
    scale: float | None = None,
    *,
    q_start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query token to the tokens of its selected blocks, causally.

    Query token `t`, head `h` attends to every key position `s <= t` inside the blocks
    `indices[b, t, h // G, :]` (`G = HQ // HKV`; negative entries are ignored; the own block is partial).
    The non-negative entries of a row must be distinct, as `select_blocks` returns them.
    Differentiable w.r.t. `q`, `k`, `v`. A row that sees no key gets `o = 0`, `lse = -inf`.

    Args:
        q: `[B, T, HQ, D]`.
        k, v: `[B, TK, HKV, D]`, `HQ % HKV == 0`; `TK == T` unless `q_start > 0`.
        indices: `[B, T, HKV, K]` int32 (or int64) block indices, `-1` = unused.
        block_size: tokens per block, as given to `select_blocks`.
        scale: logit scale, default `1 / sqrt(D)`.
        q_start: the position of query row 0 among the keys: row `t` sees keys up to position `q_start + t`
            (context parallelism: a rank's query rows against the keys before and at them).

    Returns:
        o: `[B, T, HQ, D]` in `q.dtype`.
        lse: `[B, T, HQ]` fp32 natural log-sum-exp of the scaled logits (fp64 for fp64 inputs).
    """
    _check_inputs(q, k, v, indices, block_size, q_start)
    # Dispatch point: Triton on CUDA (fp16/bf16/fp32); the reference on CPU and where the kernel cannot.
    if use_triton("sparse_attention", q):
        return parallel_sparse_attention(q, k, v, indices, block_size, scale, q_start)
    return naive_sparse_attention(q, k, v, indices, block_size, scale, q_start)


def sparse_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    block_size: int,
    scale: float | None = None,
    *,
    q_start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `sparse_attention(q, k, v, indices, block_size, scale, q_start=q_start)` from its output
    and log-sum-exp, without a recorded forward.

    `o`, `lse` may be the merged result over a superset of these keys (ring attention): the result is then
    this key set's share of the gradients (`p = exp(s − lse)`, `delta = rowsum(do ∘ o) − dlse`), exact.

    Args:
        q, o, do: `[B, T, HQ, D]`; k, v: `[B, TK, HKV, D]`; indices `[B, T, HKV, K]`; lse, dlse `[B, T, HQ]`
            (dlse may be None); the rest as `sparse_attention`.

    Returns:
        dq `[B, T, HQ, D]`, dk and dv `[B, TK, HKV, D]`: the input dtype (Triton) or the accumulation dtype
        (reference).
    """
    _check_inputs(q, k, v, indices, block_size, q_start)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if use_triton("sparse_attention", q):
        q, k, v, o, do = (x.contiguous() for x in (q, k, v, o, do.to(q.dtype)))
        indices = indices.to(torch.int32).contiguous()
        return sparse_attention_bwd(
            q, k, v, indices, o, lse.float().contiguous(), do, dlse, block_size, scale, q_start=q_start
        )

    def visible(start: int, n: int) -> torch.Tensor:
        return selected_keys(indices[:, start : start + n], q_start + start, block_size, k.shape[1])

    return naive_attention_backward(q, k, v, o, lse, do, dlse, scale, visible)
