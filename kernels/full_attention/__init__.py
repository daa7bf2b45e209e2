"""Full softmax attention with GQA, returning the log-sum-exp for merging partial results."""

import torch

from ..backends import warn_once
from ..utils import check_qkv
from .naive import naive_full_attention
from .sdpa import sdpa_full_attention

__all__ = ["full_attention", "naive_full_attention"]


def full_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of every query to every key, optionally causal.

    `causal=True` needs `TQ == TK` and masks key `s > t` for query `t`. `causal=False` attends to all keys and
    allows `TQ != TK` (e.g. a query chunk against an earlier key chunk in context parallelism).

    Args:
        q: `[B, TQ, HQ, D]`.
        k, v: `[B, TK, HKV, D]`, `HQ % HKV == 0`; query head `h` uses kv head `h // (HQ // HKV)`.
        causal: apply the causal mask.
        scale: logit scale, default `1 / sqrt(D)`.

    Returns:
        o: `[B, TQ, HQ, D]` in `q.dtype`.
        lse: `[B, TQ, HQ]` fp32 natural log-sum-exp of the scaled logits (fp64 for fp64 inputs).
    """
    check_qkv(q, k, v, same_length=causal)
    # Dispatch point: fused SDPA on CUDA (cuDNN, else flash; memory-efficient for fp32), else reference.
    if q.device.type == "cuda":
        if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            warn_once(f"full_attention:{q.dtype}", f"full_attention: no fused {q.dtype} kernel; reference")
        else:
            try:
                return sdpa_full_attention(q, k, v, causal, scale)
            except NotImplementedError as error:
                warn_once(f"full_attention:{error}", f"full_attention: {error}; using the PyTorch reference")
    return naive_full_attention(q, k, v, causal, scale)
