"""Merge two partial attention results over disjoint key sets (ring / context-parallel attention)."""

import torch

from .utils import accumulation_dtype, softmax_lse


def merge(
    o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over key sets 1 and 2 into attention over their union, weighted by log-sum-exp.

    `lse = log(exp(lse1) + exp(lse2))`, `o = exp(lse1 - lse) * o1 + exp(lse2 - lse) * o2`. A side with
    `lse = -inf` (no key seen) contributes nothing; both sides `-inf` gives `o = 0`, `lse = -inf`.
    Differentiable, without NaN in either direction.

    Args:
        o1, o2: `[B, T, H, D]`.
        lse1, lse2: `[B, T, H]` natural log-sum-exp.

    Returns:
        o: `[B, T, H, D]` in `o1.dtype`.
        lse: `[B, T, H]` fp32 (fp64 for fp64 inputs).
    """
    if o1.ndim != 4 or o2.shape != o1.shape or lse1.shape != o1.shape[:3] or lse2.shape != o1.shape[:3]:
        raise ValueError(
            f"merge needs o1, o2 [B, T, H, D] and lse1, lse2 [B, T, H]; got o1 {tuple(o1.shape)}, "
            f"lse1 {tuple(lse1.shape)}, o2 {tuple(o2.shape)}, lse2 {tuple(lse2.shape)}"
        )
    # Elementwise, so plain PyTorch is also the CUDA path.
    acc = accumulation_dtype(o1, lse1)
    weights, lse = softmax_lse(torch.stack([lse1, lse2], dim=-1).to(acc))  # [B, T, H, 2], [B, T, H]
    o = weights[..., :1] * o1.to(acc) + weights[..., 1:] * o2.to(acc)  # [B, T, H, D]
    return o.to(o1.dtype), lse
