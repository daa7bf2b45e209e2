"""At a moderate length, chunking over queries (with a ragged last chunk) changes no result or gradient."""

import pytest
import torch
from ssa_kernels.full_attention import naive_full_attention
from ssa_kernels.select_blocks import naive_select_blocks
from ssa_kernels.sparse_attention import naive_sparse_attention

from tests.kernels.helpers import assert_close

SEQ_LEN, BLOCK_SIZE, BLOCK_COUNT = 2048, 16, 8
CHUNK = 300  # 2048 = 6 * 300 + 248


def test_select_blocks() -> None:
    q, k = torch.randn(1, SEQ_LEN, 8, 16), torch.randn(1, SEQ_LEN, 2, 16)
    chunked = naive_select_blocks(q, k, BLOCK_SIZE, BLOCK_COUNT, chunk_size=CHUNK)
    assert torch.equal(chunked, naive_select_blocks(q, k, BLOCK_SIZE, BLOCK_COUNT, chunk_size=SEQ_LEN))


@pytest.mark.parametrize("op", ["sparse_attention", "full_attention"])
def test_attention(op: str) -> None:
    q = torch.randn(1, SEQ_LEN, 8, 16, requires_grad=True)
    k, v = (torch.randn(1, SEQ_LEN, 2, 16, requires_grad=True) for _ in range(2))
    if op == "sparse_attention":
        indices = naive_select_blocks(q, k, BLOCK_SIZE, BLOCK_COUNT)

        def attend(chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
            return naive_sparse_attention(q, k, v, indices, BLOCK_SIZE, chunk_size=chunk_size)
    else:

        def attend(chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
            return naive_full_attention(q, k, v, chunk_size=chunk_size)

    do = torch.randn(1, SEQ_LEN, 8, 16)
    results = []
    for chunk_size in (SEQ_LEN, CHUNK):
        o, lse = attend(chunk_size)
        results.append((o, lse, *torch.autograd.grad((o * do).sum() + lse.sum(), (q, k, v))))
    for name, ref, out in zip(("o", "lse", "dq", "dk", "dv"), *results, strict=True):
        assert_close(name, ref, out, 1e-5, 1e-5)
