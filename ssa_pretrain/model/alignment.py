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
from ssa_kernels import alignment_loss_through


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


def attach_alignment(
    a_full: torch.Tensor, a_sparse: torch.Tensor, mode: str, w_fs: float, w_sf: float, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `mode` branch's output ("full" or "sparse") with `weight * (w_fs * D(a_full, sg(a_sparse)) +
    w_sf * D(sg(a_full), a_sparse))` attached, and `D(a_full, a_sparse)` detached for logging (fp32).

    The two directions have the same value and differ only in where the gradient flows: `w_fs` moves full
    attention towards sparse, `w_sf` sparse towards full. `ssa_kernels.alignment_loss_through`: one Triton
    pass forward and one backward, which also adds the loss's gradient to the gradient the output gets from
    the layers above; its graph keeps only the two outputs.
    """
    out, loss, divergence = alignment_loss_through(a_full, a_sparse, w_fs, w_sf, mode)
    return AttachAuxLoss.apply(out, loss * weight), divergence
