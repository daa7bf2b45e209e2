"""Plain-PyTorch reference of the alignment loss: SmoothL1 (beta 1, mean) between two tensors, fwd and bwd.

The gradients are written out as aten's `smooth_l1_loss_backward` computes them, in the same order of
operations, so that on CPU they equal autograd through `F.smooth_l1_loss` bit for bit.
"""

import torch
import torch.nn.functional as F

from ..utils import accumulation_dtype


def naive_alignment_loss_fwd(a_full: torch.Tensor, a_sparse: torch.Tensor) -> torch.Tensor:
    """`D = mean(SmoothL1(a_full - a_sparse))`, beta 1: any two tensors of one shape -> an fp32 scalar
    (fp64 for fp64 inputs)."""
    acc = accumulation_dtype(a_full, a_sparse)
    return F.smooth_l1_loss(a_full.to(acc), a_sparse.to(acc))


def naive_alignment_loss_bwd(
    a_full: torch.Tensor,
    a_sparse: torch.Tensor,
    grad_loss: torch.Tensor,
    w_fs: float,
    w_sf: float,
    add_full: torch.Tensor | None = None,
    add_sparse: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of `loss = w_fs * D + w_sf * D` w.r.t. a_full (through the `w_fs` term) and a_sparse
    (through the `w_sf` term), given `grad_loss`, the 0-d gradient of `loss`.

    With `N` elements and `c = clamp(a_full - a_sparse, -1, 1)`:
    `grad_full = (c / N) * (grad_loss * w_fs)`, `grad_sparse = -(c / N) * (grad_loss * w_sf)`, each in its
    input's dtype; None for a zero weight. `add_full` / `add_sparse`: a gradient the input receives by
    another path (the branch that drives the layer: its gradient from above), added before the one rounding
    (the result is that gradient itself for a zero weight).
    """
    acc = accumulation_dtype(a_full, a_sparse)
    diff = a_full.to(acc) - a_sparse.to(acc)
    step = diff.clamp(-1, 1) * (1 / diff.numel())  # d D / d a_full; aten multiplies by 1 / N as well
    grads = []
    for x, sign, weight, extra in ((a_full, 1, w_fs, add_full), (a_sparse, -1, w_sf, add_sparse)):
        grad = (step * sign * (grad_loss * weight)) if weight else None
        if extra is not None:
            grad = extra if grad is None else extra.to(acc) + grad
        grads.append(None if grad is None else grad.to(x.dtype))
    return grads[0], grads[1]
