"""The SSA alignment loss, attached to the attention output as an auxiliary loss.

    L = CE(mode) + alpha * mean_layers[ w_fs * D(a_full, sg(a_sparse)) + w_sf * D(sg(a_full), a_sparse) ]

`D` is SmoothL1 (mean over elements), `sg` stop-gradient. As Megatron does for the MoE load-balancing
loss, the term is not added to the returned loss: `AttachAuxLoss` passes the layer output through
unchanged and, in backward, feeds the auxiliary term its own gradient. This keeps the model's forward
output exactly the language-model output and works under activation recomputation (a recomputed layer
re-attaches its term). The trainer sets `grad_scale` to 1 / (gradient-accumulation steps), the same
scaling DeepSpeed applies to the main loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class AttachAuxLoss(torch.autograd.Function):
    """Identity on `output`; in backward, `aux_loss` receives gradient `grad_scale`."""

    grad_scale: float = 1.0

    @staticmethod
    def forward(ctx, output: torch.Tensor, aux_loss: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(aux_loss)
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (aux_loss,) = ctx.saved_tensors
        return grad_output, torch.full_like(aux_loss, AttachAuxLoss.grad_scale)

    @staticmethod
    def set_grad_scale(scale: float) -> None:
        """Gradient the auxiliary terms receive (1 / accumulation steps under DeepSpeed)."""
        AttachAuxLoss.grad_scale = scale


class AlignmentLoss(torch.autograd.Function):
    """`w_fs * D(a_full, sg(a_sparse)) + w_sf * D(sg(a_full), a_sparse)` and `D(a_full, a_sparse)`, fp32.

    The same values and gradients as `F.smooth_l1_loss` on fp32 copies of the two outputs (the same aten
    kernels, forward and backward), but the graph keeps only the two outputs in their own dtype (the
    attention ops save them anyway) instead of two fp32 copies per layer; the backward recomputes the
    copies.
    """

    @staticmethod
    def forward(ctx, a_full, a_sparse, w_fs, w_sf):  # type: ignore[override]
        """a_full, a_sparse `[B, T, H, D]` -> (loss, D) fp32 scalars; D has no gradient."""
        value = F.smooth_l1_loss(a_full.float(), a_sparse.float())
        ctx.save_for_backward(a_full, a_sparse)
        ctx.weights = (w_fs, w_sf)
        ctx.mark_non_differentiable(value)
        return w_fs * value + w_sf * value, value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_value):  # type: ignore[override]
        """grad_loss (fp32 scalar) -> the gradients of a_full and a_sparse, in their dtypes."""
        a_full, a_sparse = ctx.saved_tensors
        full, sparse = a_full.float(), a_sparse.float()
        w_fs, w_sf = ctx.weights
        mean = 1  # at::Reduction::Mean

        def grad_of(x: torch.Tensor, other: torch.Tensor, weight: float) -> torch.Tensor:
            """d weight * D(x, other) / d x: smooth_l1_loss's backward (D is symmetric)."""
            return torch.ops.aten.smooth_l1_loss_backward(grad_loss * weight, x, other, mean, 1.0)

        grad_full = grad_sparse = None
        if w_fs and ctx.needs_input_grad[0]:
            grad_full = grad_of(full, sparse, w_fs).to(a_full.dtype)
        if w_sf and ctx.needs_input_grad[1]:
            grad_sparse = grad_of(sparse, full, w_sf).to(a_sparse.dtype)
        return grad_full, grad_sparse, None, None


def alignment_terms(
    a_full: torch.Tensor, a_sparse: torch.Tensor, w_fs: float, w_sf: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted loss to differentiate, D(a_full, a_sparse) detached for logging), both fp32 scalars.

    The two directions have the same value and differ only in where the gradient flows:
    `w_fs` moves full attention towards sparse, `w_sf` sparse towards full.
    """
    return AlignmentLoss.apply(a_full, a_sparse, w_fs, w_sf)
