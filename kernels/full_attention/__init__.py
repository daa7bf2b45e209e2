"""Full softmax attention with GQA, returning the log-sum-exp for merging partial results.

Besides the differentiable op, a backend API for ring attention, which differentiates each step from the
merged output and log-sum-exp instead of a recorded graph (as PyTorch's `context_parallel` and
ring-flash-attn do): `full_attention_forward` (o, lse; no graph) and `full_attention_backward` (dq, dk, dv
from o, lse, do and optionally dlse). Backends: `"sdpa"`, PyTorch's fused kernels through the aten ops
(cuDNN, else flash for fp16/bf16; memory-efficient for fp32), the default on CUDA; `"reference"`, the plain
PyTorch twin, the default elsewhere.
"""

from typing import Literal

import torch

from ..backends import warn_once
from ..utils import causal_mask, check_qkv
from .naive import naive_attention_backward, naive_full_attention
from .sdpa import sdpa_backward, sdpa_forward, sdpa_full_attention

__all__ = [
    "full_attention",
    "full_attention_backend",
    "full_attention_backward",
    "full_attention_forward",
    "naive_attention_backward",
    "naive_full_attention",
]

Backend = Literal["sdpa", "reference"]


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


def full_attention_backend(q: torch.Tensor) -> Backend:
    """The backend that `full_attention_forward` / `_backward` use for `q` by default: `"sdpa"` for CUDA
    tensors in fp16/bf16/fp32, else `"reference"`."""
    fused = q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    return "sdpa" if fused else "reference"


def full_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    backend: Backend | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`full_attention` without autograd, for callers that differentiate with `full_attention_backward`.

    Args: as `full_attention`; backend: None = `full_attention_backend(q)`.

    Returns:
        o `[B, TQ, HQ, D]` in `q.dtype`, lse `[B, TQ, HQ]` fp32 (fp64 for fp64 inputs).
    """
    check_qkv(q, k, v, same_length=causal)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with torch.no_grad():
        if (backend or full_attention_backend(q)) == "sdpa":
            return sdpa_forward(q, k, v, causal, scale)
        return naive_full_attention(q, k, v, causal, scale)


def full_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    dlse: torch.Tensor | None = None,
    causal: bool = True,
    scale: float | None = None,
    backend: Backend | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `full_attention(q, k, v, causal, scale)` from its output and log-sum-exp.

    `o`, `lse` may be the merged result of attention over a superset of these keys (ring attention: the
    global output of the query rows): the result is then this key set's share of the gradients w.r.t. q, k,
    v, with `p = exp(s − lse)` and `delta = rowsum(do ∘ o) − dlse` — exact, and no forward is recomputed.
    A `dlse` costs the fused backend one more forward and backward (the reference takes it directly).

    Args:
        q, o, do: `[B, TQ, HQ, D]`; k, v: `[B, TK, HKV, D]`; lse, dlse: `[B, TQ, HQ]` (dlse may be None).
        causal, scale: as `full_attention`; backend: None = `full_attention_backend(q)`.

    Returns:
        dq `[B, TQ, HQ, D]`, dk and dv `[B, TK, HKV, D]`: the input dtype (sdpa) or the accumulation dtype
        (reference).
    """
    check_qkv(q, k, v, same_length=causal)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if (backend or full_attention_backend(q)) == "reference":
        mask = (
            (lambda start, n: causal_mask(start, n, k.shape[1], q.device)) if causal else (lambda s, n: None)
        )
        return naive_attention_backward(q, k, v, o, lse, do, dlse, scale, mask)
    dq, dk, dv = sdpa_backward(q, k, v, o, lse, do, causal, scale)
    if dlse is not None:  # d lse / d s = p: dq += scale·dlse·(p k), dk += scale·pᵀ(dlse·q)
        o_k, lse_k = sdpa_forward(q, k, k, causal, scale)  # attention with the keys as values
        o_k = (o_k.float() * torch.exp(lse_k - lse.float())[..., None]).to(q.dtype)  # p of the merged lse
        g = (dlse.float()[..., None] * scale * q.float()).to(q.dtype)
        _, _, dk_lse = sdpa_backward(q, k, k, o_k, lse, g, causal, scale)  # the values' gradient: pᵀ g
        dq = dq + (dlse.float()[..., None] * scale * o_k.float()).to(dq.dtype)
        dk = dk + dk_lse
    return dq, dk, dv
