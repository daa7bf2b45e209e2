"""sparse_attention (after select_blocks) against a dense-mask brute force, gradcheck, the full limit."""

import pytest
import torch
from ssa_kernels import full_attention, select_blocks, sparse_attention
from ssa_kernels.sparse_attention import sparse_attention_backward

from tests.kernels.helpers import SHAPES, Shape, assert_close, select_blocks_by_rule


def dense_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: torch.Tensor, block_size: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: materialise each head's `[T, T]` mask from the selected blocks, then dense attention.

    q: `[B, T, HQ, D]`, k/v: `[B, T, HKV, D]`, selection: `[B, T, HKV, K]` (`-1` = unused)
    -> o `[B, T, HQ, D]`, lse `[B, T, HQ]`.
    """
    batch, seq_len, num_heads, _ = q.shape
    group = num_heads // k.shape[2]
    o, lse = torch.zeros_like(q), q.new_zeros(batch, seq_len, num_heads)
    for b in range(batch):
        for h in range(num_heads):
            kv = h // group
            mask = torch.zeros(seq_len, seq_len, dtype=torch.bool)
            for t in range(seq_len):
                for block in selection[b, t, kv].tolist():
                    if block >= 0:
                        mask[t, block * block_size : min((block + 1) * block_size, t + 1)] = True
            logits = (q[b, :, h] @ k[b, :, kv].T * scale).masked_fill(~mask, float("-inf"))
            o[b, :, h] = torch.softmax(logits, -1) @ v[b, :, kv]
            lse[b, :, h] = torch.logsumexp(logits, -1)
    return o, lse


def random_qkv(shape: Shape, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    q = torch.randn(shape.batch, shape.seq_len, shape.heads, shape.dim, dtype=dtype, requires_grad=True)
    k, v = (
        torch.randn(shape.batch, shape.seq_len, shape.kv_heads, shape.dim, dtype=dtype, requires_grad=True)
        for _ in range(2)
    )
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES)
def test_matches_dense_mask(shape: Shape) -> None:
    q, k, v = random_qkv(shape)
    scale = shape.dim**-0.5
    indices = select_blocks(q, k, shape.block_size, shape.block_count)
    o, lse = sparse_attention(q, k, v, indices, shape.block_size)
    selection = select_blocks_by_rule(q.detach(), k.detach(), shape.block_size, shape.block_count, scale)
    ref_o, ref_lse = dense_sparse_attention(q, k, v, selection, shape.block_size, scale)
    assert_close("o", ref_o, o, 1e-10, 1e-10)
    assert_close("lse", ref_lse, lse, 1e-10, 1e-10)
    do = torch.randn_like(o)
    ref_grads = torch.autograd.grad((ref_o * do).sum() + ref_lse.sum(), (q, k, v))
    grads = torch.autograd.grad((o * do).sum() + lse.sum(), (q, k, v))
    for name, ref, out in zip(("dq", "dk", "dv"), ref_grads, grads, strict=True):
        assert_close(name, ref, out, 1e-10, 1e-10)


def test_gradcheck() -> None:
    q = torch.randn(1, 11, 4, 4, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 11, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    indices = select_blocks(q, k, block_size=2, block_count=3)
    indices[0, 7, 1, 1] = 5  # a future block (only up to t is used) in place of a past one
    assert torch.autograd.gradcheck(lambda *x: sparse_attention(*x, indices, 2), (q, k, v))


@pytest.mark.parametrize("block_count", [7, 10], ids=["k-equals-blocks", "k-above-blocks"])
def test_all_blocks_equal_full_attention(block_count: int) -> None:
    # T=50 with block size 8 has 7 blocks (the last one partial): selecting them all is full causal attention
    q = torch.randn(2, 50, 4, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 50, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    indices = select_blocks(q, k, block_size=8, block_count=block_count)
    outputs = sparse_attention(q, k, v, indices, 8)
    ref_outputs = full_attention(q, k, v, causal=True)
    weights = [torch.randn_like(x) for x in outputs]
    grads = torch.autograd.grad(sum((x * w).sum() for x, w in zip(outputs, weights, strict=True)), (q, k, v))
    ref_grads = torch.autograd.grad(
        sum((x * w).sum() for x, w in zip(ref_outputs, weights, strict=True)), (q, k, v)
    )
    names = ("o", "lse", "dq", "dk", "dv")
    for name, ref, out in zip(names, ref_outputs + ref_grads, outputs + grads, strict=True):
        assert_close(name, ref, out, 1e-10, 1e-10)


def test_row_without_keys_is_zero_and_finite() -> None:
    q = torch.randn(1, 8, 2, 4, requires_grad=True)
    k, v = (torch.randn(1, 8, 1, 4, requires_grad=True) for _ in range(2))
    indices = torch.full((1, 8, 1, 2), -1, dtype=torch.int32)
    indices[0, :4, 0, 0] = 0
    indices[0, 4, 0, 0] = 3  # only a future block
    o, lse = sparse_attention(q, k, v, indices, block_size=2)
    assert torch.equal(o[0, 4:], torch.zeros(4, 2, 4)) and lse[0, 4:].eq(float("-inf")).all()
    assert lse[0, :4].isfinite().all()
    (o.sum() + lse.masked_fill(lse.isinf(), 0).sum()).backward()
    assert all(x.grad.isfinite().all() for x in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    q = torch.randn(1, 40, 4, 16, dtype=torch.float64)
    k, v = torch.randn(1, 40, 2, 16, dtype=torch.float64), torch.randn(1, 40, 2, 16, dtype=torch.float64)
    indices = select_blocks(q, k, block_size=4, block_count=3)
    ref_o, ref_lse = sparse_attention(q, k, v, indices, 4)
    o, lse = sparse_attention(q.to(dtype), k.to(dtype), v.to(dtype), indices, 4)
    assert o.dtype == dtype and lse.dtype == torch.float32
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    assert_close("o", ref_o, o, tolerance, tolerance)
    assert_close("lse", ref_lse, lse, tolerance, tolerance)


@pytest.mark.parametrize(
    ("indices_shape", "indices_dtype", "message"),
    [
        ((1, 8, 2), torch.int32, "indices must be"),
        ((1, 8, 1, 2), torch.int32, "indices must be"),
        ((1, 8, 2, 0), torch.int32, "indices must be"),
        ((1, 8, 2, 2), torch.float32, "int32"),
    ],
    ids=["rank", "kv-heads", "no-slots", "dtype"],
)
def test_bad_indices(indices_shape, indices_dtype, message) -> None:
    q, k, v = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4)
    with pytest.raises(ValueError, match=message):
        sparse_attention(q, k, v, torch.zeros(indices_shape, dtype=indices_dtype), block_size=4)


def test_bad_values_shape() -> None:
    q, k, v = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 5)
    with pytest.raises(ValueError, match="v must have the shape of k"):
        sparse_attention(q, k, v, torch.zeros(1, 8, 2, 1, dtype=torch.int32), block_size=4)


# (first query row, query rows, keys): rows inside the keys, rows after all keys (an earlier key chunk), keys
# ending in a partial block
OFFSET_CASES = {
    "rows-16-40-of-64": (16, 24, 64),
    "rows-after-keys": (64, 20, 64),
    "partial-block": (30, 9, 41),
}


def offset_case(start: int, rows: int, num_keys: int, dtype: torch.dtype = torch.float64):
    """A sequence long enough for the case, its selection, and the query rows `start … start + rows − 1`."""
    shape = Shape(2, max(num_keys, start + rows), 4, 2, 8, 4, 3)
    q, k, v = random_qkv(shape, dtype)
    indices = select_blocks(q, k, shape.block_size, shape.block_count)
    rows_ = slice(start, start + rows)
    return q, k, v, indices, rows_, num_keys


@pytest.mark.parametrize(("start", "rows", "num_keys"), OFFSET_CASES.values(), ids=OFFSET_CASES)
def test_query_offset_is_rows_of_the_sequence(start: int, rows: int, num_keys: int) -> None:
    """`q_start`: query rows at positions `start …` against the first `num_keys` keys == those rows of the
    whole sequence's result with the later keys' blocks unselected; gradients too; and the backward API
    from (o, lse) == autograd."""
    q, k, v, indices, rows_, num_keys = offset_case(start, rows, num_keys)
    keys = slice(0, num_keys)
    kept = torch.where(indices * 4 < num_keys, indices, -1)  # blocks past the keys: none (as the op does)
    ref_o, ref_lse = sparse_attention(q, k, v, kept, 4)
    o, lse = sparse_attention(q[:, rows_], k[:, keys], v[:, keys], indices[:, rows_], 4, q_start=start)
    assert_close("o", ref_o[:, rows_], o, 1e-10, 1e-10)
    assert_close("lse", ref_lse[:, rows_], lse, 1e-10, 1e-10)
    gen = torch.Generator().manual_seed(1)
    do, dlse = (
        torch.randn(o.shape, generator=gen, dtype=o.dtype),
        torch.randn(lse.shape, generator=gen, dtype=lse.dtype),
    )
    grads = torch.autograd.grad((o, lse), (q, k, v), (do, dlse))
    ref_grads = torch.autograd.grad((ref_o[:, rows_], ref_lse[:, rows_]), (q, k, v), (do, dlse))
    for name, ref, out in zip("qkv", ref_grads, grads, strict=True):
        assert_close(f"d{name}", ref, out, 1e-10, 1e-10)
    api = sparse_attention_backward(
        q[:, rows_], k[:, keys], v[:, keys], indices[:, rows_], o, lse, do, dlse, 4, q_start=start
    )
    for name, ref, out in zip(
        "qkv", (grads[0][:, rows_], grads[1][:, keys], grads[2][:, keys]), api, strict=True
    ):
        assert_close(f"d{name} from (o, lse)", ref, out, 1e-10, 1e-10)


def test_bad_query_offset() -> None:
    q, k, v, indices, rows_, _ = offset_case(16, 8, 64)
    with pytest.raises(ValueError, match="q_start must be >= 0"):
        sparse_attention(q[:, rows_], k, v, indices[:, rows_], 4, q_start=-1)
    with pytest.raises(ValueError, match="same sequence length"):
        sparse_attention(q[:, rows_], k, v, indices[:, rows_], 4)
