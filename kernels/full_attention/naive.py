"""Plain-PyTorch reference of full softmax attention with GQA, causal or not, and of its backward from the
output and log-sum-exp."""

from collections.abc import Callable

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


def naive_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    scale: float,
    visible: Callable[[int, int], torch.Tensor | None],
    *,
    chunk_size: int = QUERY_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of masked softmax attention from its output and log-sum-exp, without a recorded forward.

    `p = exp(scale · q k − lse)` on the visible keys, `delta = rowsum(do ∘ o) − dlse`,
    `ds = p (do vᵀ − delta)`: `dq = scale · ds k`, `dk = scale · dsᵀ q`, `dv = pᵀ do`. `o` and `lse` may be
    those of attention over a *superset* of these keys (the merged result of ring attention): the gradients
    are then this key set's share of the superset's gradients, which is how ring attention differentiates
    each step without recomputing it.

    Args:
        q, o, do: `[B, TQ, HQ, D]`; k, v: `[B, TK, HKV, D]`; lse, dlse: `[B, TQ, HQ]` (dlse may be None).
        visible: `(start, n) -> [B or 1, n, HKV or 1, TK]` bool mask of queries `start … start + n − 1`
            (None: every key).
        chunk_size: query rows scored at once.

    Returns:
        dq `[B, TQ, HQ, D]`, dk and dv `[B, TK, HKV, D]`, in the accumulation dtype (fp32, fp64 for fp64).
    """
    acc = accumulation_dtype(q, lse)
    kv_heads = k.shape[2]
    k, v = k.to(acc), v.to(acc)
    dq = torch.empty(q.shape, dtype=acc, device=q.device)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    for start in range(0, q.shape[1], chunk_size):
        rows = slice(start, start + chunk_size)
        qc = q[:, rows].to(acc).unflatten(2, (kv_heads, -1))  # [B, C, HKV, G, D]
        doc = do[:, rows].to(acc).unflatten(2, (kv_heads, -1))
        delta = (doc * o[:, rows].to(acc).unflatten(2, (kv_heads, -1))).sum(-1)  # [B, C, HKV, G]
        if dlse is not None:
            delta = delta - dlse[:, rows].to(acc).unflatten(2, (kv_heads, -1))
        row_lse = lse[:, rows].to(acc).unflatten(2, (kv_heads, -1))
        logits = torch.einsum("bchgd,bshd->bchgs", qc, k) * scale
        p = torch.exp(logits - torch.where(torch.isfinite(row_lse), row_lse, 0.0)[..., None])
        p = p.masked_fill(~torch.isfinite(row_lse)[..., None], 0.0)  # rows that saw no key
        mask = visible(start, qc.shape[1])
        if mask is not None:
            p = p.masked_fill(~mask[:, :, :, None, :], 0.0)
        dv += torch.einsum("bchgs,bchgd->bshd", p, doc)
        ds = p * (torch.einsum("bchgd,bshd->bchgs", doc, v) - delta[..., None])
        dq[:, rows] = (torch.einsum("bchgs,bshd->bchgd", ds, k) * scale).flatten(2, 3)
        dk += torch.einsum("bchgs,bchgd->bshd", ds, qc) * scale
    return dq, dk, dv
