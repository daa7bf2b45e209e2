"""The alignment loss as the model attaches it: exactly the SmoothL1 formula on fp32 copies of the two
branch outputs, its gradient added to the one the mode's output gets from above (fp32 bit for bit; bf16
within the one rounding autograd's separate sum adds), while its graph keeps only the two outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssa_pretrain.model.alignment import AttachAuxLoss, attach_alignment

WEIGHT = 1000.0
"""The loss's weight: its gradient (~ WEIGHT / 3,072 elements) as large as the one from above."""


def outputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """a_full, a_sparse `[B, T, H, D]`; about a third of the differences beyond SmoothL1's beta = 1."""
    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 24, 4, 16, generator=g).to(dtype).requires_grad_()
    sparse = (full.detach() + torch.randn(full.shape, generator=g)).to(dtype).requires_grad_()
    return full, sparse


def formula(a_full, a_sparse, mode: str, w_fs: float, w_sf: float, weight: float):
    """DESIGN.md's terms, written out: w_fs D(full, sg(sparse)) + w_sf D(sg(full), sparse) on fp32 copies,
    added to the loss (autograd sums the two gradients of the mode's output); the output and D."""
    full, sparse = a_full.float(), a_sparse.float()
    loss = w_fs * F.smooth_l1_loss(full, sparse.detach()) + w_sf * F.smooth_l1_loss(full.detach(), sparse)
    return (
        a_full if mode == "full" else a_sparse,
        weight * loss,
        F.smooth_l1_loss(full.detach(), sparse.detach()),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, 2.0), (0.0, 1.0), (1.0, 0.0)], ids=str)
@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_values_and_gradients_equal_the_formula(dtype, weights, mode):
    AttachAuxLoss.set_grad_scale(1.0)
    upstream = torch.randn(2, 24, 4, 16, generator=torch.Generator().manual_seed(1))
    results = []
    for ours in (False, True):
        full, sparse = outputs(dtype)
        if ours:
            out, value = attach_alignment(full, sparse, mode, *weights, WEIGHT)
            (out.float() * upstream).sum().backward()
        else:
            out, loss, value = formula(full, sparse, mode, *weights, WEIGHT)
            ((out.float() * upstream).sum() + loss).backward()
        grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in (full, sparse)]
        results.append((out.detach(), value, *grads))
    for name, ref, got in zip(("output", "value", "grad full", "grad sparse"), *results, strict=True):
        assert got.dtype == ref.dtype, name
        if dtype == torch.float32 or not name.startswith("grad"):
            assert torch.equal(got, ref), name
        else:  # one rounding of (upstream + alignment) against autograd's two: an ulp of the summands
            summands = upstream.abs() + WEIGHT * max(weights) / upstream.numel()
            assert ((got.float() - ref.float()).abs() <= summands * 2**-7).all(), name
    assert not results[1][1].requires_grad


def test_graph_keeps_only_the_two_outputs():
    """The formula's graph holds two fp32 copies of the outputs (4x their bf16 size); ours none."""
    full, sparse = outputs(torch.bfloat16)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = attach_alignment(full, sparse, "sparse", 1.0, 1.0, 1.0)
    outputs_kept = {full.untyped_storage().data_ptr(), sparse.untyped_storage().data_ptr()}
    assert all(nbytes <= 8 for ptr, nbytes in saved.items() if ptr not in outputs_kept)  # the 0-d loss
    out.float().sum().backward()
    assert full.grad is not None and sparse.grad is not None
