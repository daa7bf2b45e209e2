"""The alignment loss: exactly the SmoothL1 formula on fp32 copies of the two branch outputs (values and
gradients bit for bit, bf16 and fp32 inputs), while its graph keeps only the two outputs themselves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssa_pretrain.model.alignment import alignment_terms


def outputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """a_full, a_sparse `[B, T, H, D]`; about a third of the differences beyond SmoothL1's beta = 1."""
    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 24, 4, 16, generator=g).to(dtype).requires_grad_()
    sparse = (full.detach() + torch.randn(full.shape, generator=g)).to(dtype).requires_grad_()
    return full, sparse


def formula(a_full, a_sparse, w_fs: float, w_sf: float):
    """DESIGN.md's terms, written out: w_fs D(full, sg(sparse)) + w_sf D(sg(full), sparse) on fp32 copies."""
    full, sparse = a_full.float(), a_sparse.float()
    loss = w_fs * F.smooth_l1_loss(full, sparse.detach()) + w_sf * F.smooth_l1_loss(full.detach(), sparse)
    return loss, F.smooth_l1_loss(full.detach(), sparse.detach())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.5, 2.0), (0.0, 1.0), (1.0, 0.0)], ids=str)
def test_values_and_gradients_equal_the_formula_bit_for_bit(dtype, weights):
    results = []
    for fn in (formula, alignment_terms):
        full, sparse = outputs(dtype)
        loss, value = fn(full, sparse, *weights)
        (loss * 3.0).backward()
        grads = [torch.zeros_like(t) if t.grad is None else t.grad for t in (full, sparse)]
        results.append((loss.detach(), value, *grads))
    for name, ref, got in zip(("loss", "value", "grad full", "grad sparse"), *results, strict=True):
        assert got.dtype == ref.dtype, name
        assert torch.equal(got, ref), name
    assert not results[1][1].requires_grad


def test_graph_keeps_only_the_two_outputs():
    """The formula's graph holds two fp32 copies of the outputs (4x their bf16 size); ours none."""
    full, sparse = outputs(torch.bfloat16)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = alignment_terms(full, sparse, 1.0, 1.0)
    assert set(saved) <= {full.untyped_storage().data_ptr(), sparse.untyped_storage().data_ptr()}
    loss.backward()
    assert full.grad is not None and sparse.grad is not None
