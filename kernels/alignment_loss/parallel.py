"""Triton alignment loss: one pass over both inputs forward, one pass backward, nothing copied to fp32.

Forward: each program sums the SmoothL1 terms of `BLOCK` elements in fp32 and writes its partial sum; torch
sums the partials (a fixed order, no atomics: the same value run to run). Backward: each program reads its
elements of both inputs and the incoming 0-d gradient from device memory (no host sync) and writes the
gradient of each input whose weight is nonzero, plus, when given, the gradient that input receives by
another path (read in place: the sum autograd would otherwise make costs no pass of its own).
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
def plus_added(grad, add, row, col, mask, T, stride_b, stride_t):
    """`grad` (fp32) plus the added gradient `add` at the same elements (row `row`, column `col` of the
    `[B * T, ROW]` rows; strides between batch elements and rows), or `grad` itself when `add` is None."""
    if add is not None:
        at = (row // T) * stride_b + (row % T) * stride_t + col
        grad += tl.load(add + at, mask=mask, other=0.0).to(tl.float32)
    return grad


@triton.jit
def alignment_bwd_kernel(
    full,  # [N]
    sparse,  # [N]
    grad_loss,  # [] fp32, the gradient of w_fs * D + w_sf * D
    grad_full,  # [N] in full's dtype, or None (w_fs = 0)
    grad_sparse,  # [N] in sparse's dtype, or None (w_sf = 0)
    add_full,  # [rows, ROW] strided rows (see `_rows`): a gradient to add to grad_full, or None
    add_sparse,  # the same for grad_sparse
    N,
    inv_n,
    w_fs,
    w_sf,
    T,  # rows per batch element of the added gradients
    ROW,  # elements per row
    full_stride_b,  # strides of add_full between batch elements and between rows
    full_stride_t,
    sparse_stride_b,
    sparse_stride_t,
    BLOCK: tl.constexpr,
):
    """Grid `(cdiv(N, BLOCK),)`: `grad_full = (c / N)(g w_fs) + add_full`, `grad_sparse = -(c / N)(g w_sf) +
    add_sparse` with `c = clamp(full - sparse, -1, 1)` and `g = grad_loss`, for elements `p * BLOCK …`."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(full + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(sparse + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(grad_loss)
    step = tl.clamp(x - y, -1.0, 1.0) * inv_n
    row, col = offs // ROW, offs % ROW
    if grad_full is not None:
        gf = plus_added(step * (g * w_fs), add_full, row, col, mask, T, full_stride_b, full_stride_t)
        tl.store(grad_full + offs, gf.to(grad_full.dtype.element_ty), mask=mask)
    if grad_sparse is not None:
        gs = plus_added(-step * (g * w_sf), add_sparse, row, col, mask, T, sparse_stride_b, sparse_stride_t)
        tl.store(grad_sparse + offs, gs.to(grad_sparse.dtype.element_ty), mask=mask)


def _row_shape(x: torch.Tensor) -> tuple[int, int]:
    """`x` `[B, T, ...]` as rows: (T, elements per row); a tensor of fewer dims is one row per element."""
    return (x.shape[1], x[0, 0].numel()) if x.dim() >= 2 else (1, 1)


def _rows(x: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor | None, int, int]:
    """`x` (the shape of `like`) as rows the kernel reads in place: (tensor, stride between batch elements,
    stride between rows). Dims 0 and 1 may have any strides (the transposed view autograd hands back for a
    `[b, s, ...]` output reshaped from `[s, b, ...]`); the rest must be one contiguous row, else a contiguous
    copy is read."""
    if x is None:
        return None, 0, 0
    if x.shape != like.shape:
        raise ValueError(
            f"alignment_loss_bwd: an added gradient of shape {tuple(x.shape)} for inputs {tuple(like.shape)}"
        )
    if x.dim() >= 2 and x[0, 0].is_contiguous():
        return x, x.stride(0), x.stride(1)
    rows, row = _row_shape(like)
    return x.contiguous(), rows * row, row


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
    add_full: torch.Tensor | None = None,
    add_sparse: torch.Tensor | None = None,
    *,
    block: int = BLOCK,
    warps: int = WARPS,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Triton twin of `naive_alignment_loss_bwd` (same arguments and results; `grad_loss` stays on the
    device). An added gradient is read in place when only its first two dims are strided (`_rows`): the
    sum costs no pass of its own."""
    a_full, a_sparse = a_full.contiguous(), a_sparse.contiguous()
    grad_full = torch.empty_like(a_full) if w_fs else add_full
    grad_sparse = torch.empty_like(a_sparse) if w_sf else add_sparse
    if not (w_fs or w_sf):
        return grad_full, grad_sparse
    (add_full, full_b, full_t), (add_sparse, sparse_b, sparse_t) = (
        _rows(x, a_full) if w else (None, 0, 0) for x, w in ((add_full, w_fs), (add_sparse, w_sf))
    )
    n = a_full.numel()
    rows, row = _row_shape(a_full)
    alignment_bwd_kernel[(triton.cdiv(n, block),)](
        full=a_full,
        sparse=a_sparse,
        grad_loss=grad_loss.to(torch.float32).contiguous(),
        grad_full=grad_full if w_fs else None,
        grad_sparse=grad_sparse if w_sf else None,
        add_full=add_full,
        add_sparse=add_sparse,
        N=n,
        inv_n=1 / n,
        w_fs=float(w_fs),
        w_sf=float(w_sf),
        T=rows,
        ROW=row,
        full_stride_b=full_b,
        full_stride_t=full_t,
        sparse_stride_b=sparse_b,
        sparse_stride_t=sparse_t,
        BLOCK=block,
        num_warps=warps,
    )
    return grad_full, grad_sparse
