"""Triton alignment loss: one pass over both inputs forward, one pass backward, nothing copied to fp32.

Forward: each program sums the SmoothL1 terms of `BLOCK` elements in fp32 and writes its partial sum; torch
sums the partials (a fixed order, no atomics: the same value run to run). Backward: each program reads its
elements of both inputs and the incoming 0-d gradient from device memory (no host sync) and writes the
gradient of each input whose weight is nonzero.
"""

import torch

from ..backends import tl, triton

BLOCK = 4096  # elements per program: 16 per thread at 8 warps, two 16-byte loads per bf16 input
WARPS = 8


@triton.jit
def alignment_fwd_kernel(
    full,  # [N]
    sparse,  # [N]
    partial,  # [cdiv(N, BLOCK)] fp32: each program's sum of SmoothL1(full - sparse)
    N,
    BLOCK: tl.constexpr,
):
    """Grid `(cdiv(N, BLOCK),)`: program `p` sums the SmoothL1 (beta 1) terms of elements `p * BLOCK …`."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(full + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(sparse + offs, mask=mask, other=0.0).to(tl.float32)
    d = x - y
    ad = tl.abs(d)
    terms = tl.where(ad < 1.0, 0.5 * d * d, ad - 0.5)  # masked elements: d = 0, term 0
    tl.store(partial + tl.program_id(0), tl.sum(terms, 0))


@triton.jit
def alignment_bwd_kernel(
    full,  # [N]
    sparse,  # [N]
    grad_loss,  # [] fp32, the gradient of w_fs * D + w_sf * D
    grad_full,  # [N] in full's dtype, or None (w_fs = 0)
    grad_sparse,  # [N] in sparse's dtype, or None (w_sf = 0)
    N,
    inv_n,
    w_fs,
    w_sf,
    BLOCK: tl.constexpr,
):
    """Grid `(cdiv(N, BLOCK),)`: `grad_full = (c / N)(g w_fs)`, `grad_sparse = -(c / N)(g w_sf)` with
    `c = clamp(full - sparse, -1, 1)` and `g = grad_loss`, for elements `p * BLOCK …`."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(full + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(sparse + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(grad_loss)
    step = tl.clamp(x - y, -1.0, 1.0) * inv_n
    if grad_full is not None:
        tl.store(grad_full + offs, (step * (g * w_fs)).to(grad_full.dtype.element_ty), mask=mask)
    if grad_sparse is not None:
        tl.store(grad_sparse + offs, (-step * (g * w_sf)).to(grad_sparse.dtype.element_ty), mask=mask)


def alignment_loss_fwd(
    a_full: torch.Tensor, a_sparse: torch.Tensor, *, block: int = BLOCK, warps: int = WARPS
) -> torch.Tensor:
    """Triton twin of `naive_alignment_loss_fwd`: two tensors of one shape (fp16/bf16/fp32) -> the fp32
    mean of their SmoothL1 terms."""
    a_full, a_sparse = a_full.contiguous(), a_sparse.contiguous()
    n = a_full.numel()
    partial = torch.empty(triton.cdiv(n, block), device=a_full.device, dtype=torch.float32)
    alignment_fwd_kernel[(partial.numel(),)](
        full=a_full, sparse=a_sparse, partial=partial, N=n, BLOCK=block, num_warps=warps
    )
    return partial.sum() / n


def alignment_loss_bwd(
    a_full: torch.Tensor,
    a_sparse: torch.Tensor,
    grad_loss: torch.Tensor,
    w_fs: float,
    w_sf: float,
    *,
    block: int = BLOCK,
    warps: int = WARPS,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Triton twin of `naive_alignment_loss_bwd` (same arguments and results; `grad_loss` stays on the
    device)."""
    a_full, a_sparse = a_full.contiguous(), a_sparse.contiguous()
    grad_full = torch.empty_like(a_full) if w_fs else None
    grad_sparse = torch.empty_like(a_sparse) if w_sf else None
    if grad_full is None and grad_sparse is None:
        return None, None
    n = a_full.numel()
    alignment_bwd_kernel[(triton.cdiv(n, block),)](
        full=a_full,
        sparse=a_sparse,
        grad_loss=grad_loss.to(torch.float32).contiguous(),
        grad_full=grad_full,
        grad_sparse=grad_sparse,
        N=n,
        inv_n=1 / n,
        w_fs=float(w_fs),
        w_sf=float(w_sf),
        BLOCK=block,
        num_warps=warps,
    )
    return grad_full, grad_sparse
