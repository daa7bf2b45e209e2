"""select_blocks against DESIGN.md's rule written as loops, the tie rule, dtypes and input checks."""

import pytest
import torch
from ssa_kernels import select_blocks
from ssa_kernels.select_blocks import naive_select_blocks

from tests.kernels.helpers import SHAPES, Shape, select_blocks_by_rule


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
def test_matches_rule(shape: Shape) -> None:
    # fp64 so that rounding cannot reorder nearly equal scores between the two implementations
    q = torch.randn(shape.batch, shape.seq_len, shape.heads, shape.dim, dtype=torch.float64)
    k = torch.randn(shape.batch, shape.seq_len, shape.kv_heads, shape.dim, dtype=torch.float64)
    out = select_blocks(q, k, shape.block_size, shape.block_count)
    assert out.dtype == torch.int32
    expected = select_blocks_by_rule(q, k, shape.block_size, shape.block_count, shape.dim**-0.5)
    assert torch.equal(out.long(), expected)
    chunked = naive_select_blocks(q, k, shape.block_size, shape.block_count, chunk_size=7)
    assert torch.equal(chunked, out)


@pytest.mark.parametrize("heads", [2, 8], ids=["g1", "g4"])
def test_equal_scores_rank_lower_block_first(heads: int) -> None:
    # every block holds the same keys, so every past block gets the same score (integers keep it exact)
    block_size, block_count, seq_len = 4, 5, 30
    block = torch.randint(-3, 4, (1, block_size, 2, 8)).double()
    k = block.repeat(1, seq_len // block_size + 1, 1, 1)[:, :seq_len]
    q = torch.randint(-3, 4, (1, seq_len, heads, 8)).double()
    out = select_blocks(q, k, block_size, block_count)
    for t in range(seq_len):
        own = t // block_size
        past = list(range(min(own, block_count - 1)))
        expected = [own, *past] + [-1] * (block_count - 1 - len(past))
        assert out[0, t].tolist() == [expected, expected], f"t={t}"


def test_tie_with_a_better_later_block() -> None:
    # blocks 1 and 3 tie for the best score, block 2 is worse; one past slot must hold block 1
    block_size, dim = 2, 4
    means = torch.tensor([0.0, 5.0, 1.0, 5.0, 0.0])  # per block, along the query direction
    k = means.repeat_interleave(block_size)[None, :, None, None] * torch.ones(1, 1, 1, dim)
    q = torch.ones(1, 10, 1, dim)
    out = select_blocks(q, k, block_size, block_count=2)
    assert out[0, 8:, 0].tolist() == [[4, 1], [4, 1]]
    out = select_blocks(q, k, block_size, block_count=4)
    assert out[0, 9, 0].tolist() == [4, 1, 3, 2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    q, k = torch.randn(2, 40, 4, 8, dtype=dtype), torch.randn(2, 40, 2, 8, dtype=dtype)
    out = select_blocks(q, k, block_size=4, block_count=3)
    assert out.dtype == torch.int32 and out.shape == (2, 40, 2, 3)
    assert torch.equal(out[..., 0], (torch.arange(40) // 4).int()[None, :, None].expand(2, 40, 2))


def test_no_grad() -> None:
    q = torch.randn(1, 16, 2, 4, requires_grad=True)
    assert not select_blocks(q, torch.randn(1, 16, 1, 4), 4, 2).requires_grad


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "block_size", "block_count", "message"),
    [
        ((1, 8, 2, 4), (1, 8, 2), 4, 2, "k must be"),
        ((1, 8, 3, 4), (1, 8, 2, 4), 4, 2, "multiple of key/value heads"),
        ((1, 8, 2, 4), (1, 9, 2, 4), 4, 2, "same sequence length"),
        ((1, 8, 2, 4), (1, 8, 2, 5), 4, 2, "head dim"),
        ((1, 8, 2, 4), (1, 8, 2, 4), 0, 2, "block_size must be >= 1"),
        ((1, 8, 2, 4), (1, 8, 2, 4), 4, 0, "block_count must be >= 1"),
    ],
    ids=["k-rank", "heads", "length", "dim", "block-size", "block-count"],
)
def test_bad_inputs(q_shape, k_shape, block_size, block_count, message) -> None:
    with pytest.raises(ValueError, match=message):
        select_blocks(torch.randn(q_shape), torch.randn(k_shape), block_size, block_count)


@pytest.mark.parametrize("scale", [0.0, -0.125, float("nan")], ids=["zero", "negative", "nan"])
def test_scale_must_be_positive(scale: float) -> None:
    with pytest.raises(ValueError, match="scale must be > 0"):
        select_blocks(torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4), 4, 2, scale)
