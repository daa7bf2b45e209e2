"""merge: attention over two disjoint key sets merged equals attention over their union; -inf safety."""

import pytest
import torch
from ssa_kernels import full_attention, merge

from tests.kernels.helpers import assert_close


def test_two_key_halves_equal_all_keys() -> None:
    q = torch.randn(2, 19, 4, 8, dtype=torch.float64)
    k, v = torch.randn(2, 30, 2, 8, dtype=torch.float64), torch.randn(2, 30, 2, 8, dtype=torch.float64)
    first = full_attention(q, k[:, :13], v[:, :13], causal=False)
    second = full_attention(q, k[:, 13:], v[:, 13:], causal=False)
    o, lse = merge(*first, *second)
    ref_o, ref_lse = full_attention(q, k, v, causal=False)
    assert_close("o", ref_o, o, 1e-12, 1e-12)
    assert_close("lse", ref_lse, lse, 1e-12, 1e-12)


def test_context_parallel_chunks_equal_causal_rows() -> None:
    # the queries of chunk 2 see all of chunk 1 and chunk 2 causally: rows 16… of full causal attention
    q = torch.randn(1, 32, 4, 8, dtype=torch.float64)
    k, v = torch.randn(1, 32, 2, 8, dtype=torch.float64), torch.randn(1, 32, 2, 8, dtype=torch.float64)
    earlier = full_attention(q[:, 16:], k[:, :16], v[:, :16], causal=False)
    diagonal = full_attention(q[:, 16:], k[:, 16:], v[:, 16:], causal=True)
    o, lse = merge(*diagonal, *earlier)
    ref_o, ref_lse = full_attention(q, k, v, causal=True)
    assert_close("o", ref_o[:, 16:], o, 1e-12, 1e-12)
    assert_close("lse", ref_lse[:, 16:], lse, 1e-12, 1e-12)


def test_gradcheck_with_one_empty_side() -> None:
    o1, o2 = (torch.randn(1, 3, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    lse1 = torch.randn(1, 3, 2, dtype=torch.float64)
    lse2 = torch.randn(1, 3, 2, dtype=torch.float64)
    lse1[0, 0, 1] = float("-inf")  # side 1 saw no key for this row
    lse2[0, 2, 0] = float("-inf")
    lse1.requires_grad_(), lse2.requires_grad_()
    assert torch.autograd.gradcheck(merge, (o1, lse1, o2, lse2))


def test_both_sides_empty_is_zero_without_nan() -> None:
    o1, o2 = (torch.randn(1, 2, 1, 4, requires_grad=True) for _ in range(2))
    lse1 = torch.tensor([[[float("-inf")], [0.5]]], requires_grad=True)
    lse2 = torch.tensor([[[float("-inf")], [float("-inf")]]], requires_grad=True)
    o, lse = merge(o1, lse1, o2, lse2)
    assert torch.equal(o[0, 0], torch.zeros(1, 4)) and lse[0, 0, 0] == float("-inf")
    torch.testing.assert_close(o[0, 1], o1[0, 1])
    assert lse[0, 1, 0] == 0.5
    (o.sum() + lse[0, 1].sum()).backward()
    assert all(x.grad.isfinite().all() for x in (o1, o2, lse1, lse2))


def test_bad_shapes() -> None:
    o, lse = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2)
    with pytest.raises(ValueError, match="merge needs"):
        merge(o, lse, o, lse[:, :3])
