"""The SSA alignment loss between the two attention branches' outputs: SmoothL1 (beta 1, mean).

`loss = w_fs * D + w_sf * D` with `D = SmoothL1(a_full, a_sparse)`; the `w_fs` term sends its gradient to
`a_full` only, the `w_sf` term to `a_sparse` only (each direction stops the other's gradient). The graph
keeps the two inputs in their own dtype and nothing else: no fp32 copies (the attention ops save the two
outputs anyway).
"""

import torch

from ..backends import HAS_TRITON, use_triton
from .naive import naive_alignment_loss_bwd, naive_alignment_loss_fwd

if HAS_TRITON:
    from .parallel import alignment_loss_bwd, alignment_loss_fwd

__all__ = ["alignment_loss", "alignment_loss_through", "naive_alignment_loss_bwd", "naive_alignment_loss_fwd"]


class AlignmentLoss(torch.autograd.Function):
    """Autograd of the alignment loss on either backend (`fast`: the Triton kernels, else the reference);
    saves only the two inputs. With `through` ("full" or "sparse") that input is also passed on as the first
    output, and the backward adds its loss gradient to the gradient that output receives, in the same pass."""

    @staticmethod
    def forward(ctx, a_full, a_sparse, w_fs, w_sf, fast, through=None):  # type: ignore[override]
        """a_full, a_sparse `[...]` -> (loss, D) 0-d fp32, D without gradient; ([the input passed on],
        loss, D) with `through`."""
        value = (alignment_loss_fwd if fast else naive_alignment_loss_fwd)(a_full, a_sparse)
        ctx.save_for_backward(a_full, a_sparse)
        ctx.weights, ctx.fast, ctx.through = (w_fs, w_sf), fast, through
        ctx.mark_non_differentiable(value)
        loss = w_fs * value + w_sf * value
        if through is None:
            return loss, value
        return (a_full if through == "full" else a_sparse), loss, value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):  # type: ignore[override]
        """([grad of the passed-on input,] grad_loss (0-d fp32), -) -> the gradients of a_full and a_sparse
        in their dtypes (None: weight 0 and not passed on)."""
        a_full, a_sparse = ctx.saved_tensors
        passed, grad_loss = (None, grads[0]) if ctx.through is None else grads[:2]
        w_fs, w_sf = (
            w if needed else 0.0 for w, needed in zip(ctx.weights, ctx.needs_input_grad[:2], strict=True)
        )
        grads = (alignment_loss_bwd if ctx.fast else naive_alignment_loss_bwd)(
            a_full,
            a_sparse,
            grad_loss,
            w_fs,
            w_sf,
            passed if ctx.through == "full" else None,
            passed if ctx.through == "sparse" else None,
        )
        return *grads, None, None, None, None


def _checked(a_full: torch.Tensor, a_sparse: torch.Tensor, w_fs: float, w_sf: float) -> None:
    if a_full.shape != a_sparse.shape or a_full.dtype != a_sparse.dtype:
        raise ValueError(
            f"alignment_loss needs two tensors of one shape and dtype, got a_full {tuple(a_full.shape)} "
            f"{a_full.dtype} and a_sparse {tuple(a_sparse.shape)} {a_sparse.dtype}"
        )
    if a_full.numel() == 0:
        raise ValueError(f"alignment_loss: the inputs are empty, shape {tuple(a_full.shape)}")
    if not (w_fs >= 0 and w_sf >= 0):
        raise ValueError(f"alignment_loss: weights must be >= 0, got w_fs={w_fs}, w_sf={w_sf}")


def alignment_loss(
    a_full: torch.Tensor, a_sparse: torch.Tensor, w_fs: float, w_sf: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`w_fs * D(a_full, sg(a_sparse)) + w_sf * D(sg(a_full), a_sparse)` and `D(a_full, a_sparse)`.

    `D` is SmoothL1 with beta 1, the mean over all elements, computed in fp32; `sg` stops the gradient.
    Differentiable w.r.t. both inputs (a zero weight gives its input no gradient); the second result is
    detached, for logging. Triton on CUDA (fp16/bf16/fp32: one pass forward, one backward, no host sync);
    the reference elsewhere (its gradients equal autograd through `F.smooth_l1_loss` bit for bit on CPU).

    Args:
        a_full, a_sparse: tensors of one shape and dtype, e.g. the two branches' outputs `[B, T, H, D]`.
        w_fs, w_sf: weights of the two directions, >= 0.

    Returns:
        loss, D: 0-d fp32 (fp64 for fp64 inputs).
    """
    _checked(a_full, a_sparse, w_fs, w_sf)
    return AlignmentLoss.apply(
        a_full, a_sparse, float(w_fs), float(w_sf), use_triton("alignment_loss", a_full)
    )


def alignment_loss_through(
    a_full: torch.Tensor, a_sparse: torch.Tensor, w_fs: float, w_sf: float, through: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`alignment_loss`, passing the input named by `through` ("full" or "sparse": the branch that drives the
    layer) on as its first result: (that input, loss, D). The same values as `alignment_loss`; the gradient
    that input gets from above and its loss gradient are summed inside the backward kernel (rounded once)
    instead of by autograd in a pass of their own."""
    _checked(a_full, a_sparse, w_fs, w_sf)
    if through not in ("full", "sparse"):
        raise ValueError(f"alignment_loss_through: through must be 'full' or 'sparse', got {through!r}")
    fast = use_triton("alignment_loss", a_full)
    return AlignmentLoss.apply(a_full, a_sparse, float(w_fs), float(w_sf), fast, through)
