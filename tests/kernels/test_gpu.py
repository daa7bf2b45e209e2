"""The CUDA paths (Triton select/sparse, fused SDPA full attention, mixed-head attention over both, the
Triton alignment loss) against the references, on random bf16.

Every output buffer the kernels allocate is poisoned (NaN, or -7 for integers) first, so an element a kernel
fails to write shows up as NaN or a wrong index. Tolerances are relative norms `‖out - ref‖ / ‖ref‖` against
the fp32 reference run on the same bf16 inputs: 1e-2 for outputs, 2e-2 for gradients (bf16 products and a
bf16 output rounding, ~4e-3 each), 1e-4 for fp32 inputs.
"""

from collections.abc import Iterator

import pytest
import torch
from ssa_kernels import (
    alignment_loss,
    alignment_loss_through,
    full_attention,
    mixed_attention,
    select_blocks,
    select_blocks_from_means,
    sparse_attention,
)
from ssa_kernels.alignment_loss import naive_alignment_loss_bwd, naive_alignment_loss_fwd
from ssa_kernels.full_attention import naive_full_attention
from ssa_kernels.mixed_attention.naive import pick_heads
from ssa_kernels.select_blocks import naive_select_blocks
from ssa_kernels.select_blocks.naive import block_means, block_scores
from ssa_kernels.sparse_attention import naive_sparse_attention

from tests.kernels.helpers import Shape, assert_rel_close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

# GQA 1/2/16, head dims 64 and 128, lengths off the block and tile grids, batch > 1, long enough for several
# score tiles in the selection (T = 4099: 256 blocks)
GPU_SHAPES = {
    "g1-B2-T300-d64-k8": Shape(2, 300, 4, 4, 64, 16, 8),
    "g2-T1000-d128-k16": Shape(1, 1000, 4, 2, 128, 16, 16),
    "g16-B2-T517-d64-k16": Shape(2, 517, 32, 2, 64, 16, 16),
    "g16-T777-d128-k16": Shape(1, 777, 16, 1, 128, 16, 16),
    "g4-T203-d64-bs4-k7": Shape(1, 203, 8, 2, 64, 4, 7),
    "g2-T100-d64-k1-own-block-only": Shape(1, 100, 4, 2, 64, 16, 1),
    "g16-T4099-d64-k16": Shape(1, 4099, 32, 2, 64, 16, 16),
}


@pytest.fixture
def poison(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`torch.empty` / `torch.empty_like` return NaN-filled (float) or -7-filled (integer) tensors."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # also for tensors created with requires_grad=True
            return x.fill_(float("nan") if x.is_floating_point() else -7)

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: fill(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: fill(empty_like(*a, **kw)))
    yield


def random_inputs(shape: Shape, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q `[B, T, HQ, D]`, k/v `[B, T, HKV, D]` on CUDA, requiring grad."""
    q = torch.randn(shape.batch, shape.seq_len, shape.heads, shape.dim, device="cuda", dtype=dtype)
    k, v = (
        torch.randn(shape.batch, shape.seq_len, shape.kv_heads, shape.dim, device="cuda", dtype=dtype)
        for _ in range(2)
    )
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_()


def check_selection(
    q: torch.Tensor, k: torch.Tensor, out: torch.Tensor, ref: torch.Tensor, shape: Shape, rel: float
) -> None:
    """Own block and padding exactly as the reference; the chosen past blocks a top-(K-1) up to rounding.

    Rank by rank, the chosen block's fp32 reference score is at least `1 - rel` times the reference's choice:
    swaps only between nearly equal scores ("ties aside"; bf16 rounding of the block means moves a logit by
    ~5e-4 at D = 128, fp32 summation order by ~1e-7). Exact ties are tested by `test_select_blocks_tie_rule`.
    """
    assert torch.equal(out[..., 0], ref[..., 0]), "own block"
    assert torch.equal(out < 0, ref < 0), "padding"
    kbar = block_means(k.float(), shape.block_size)
    scores = block_scores(q.float(), kbar, 0, shape.block_size, q.shape[-1] ** -0.5)  # [B, T, HKV, NB]
    scores = torch.cat([scores, scores.new_full((*scores.shape[:3], 1), float("-inf"))], -1)
    past = out[..., 1:].long()
    chosen = scores.gather(-1, past.where(past >= 0, scores.shape[-1] - 1))  # -1 slots -> -inf column
    ref_chosen = scores.gather(-1, ref[..., 1:].long().where(ref[..., 1:] >= 0, scores.shape[-1] - 1))
    finite = ref_chosen.isfinite()
    worst = (chosen[finite] / ref_chosen[finite].clamp_min(1e-30)).min().item() if finite.any() else 1.0
    assert worst >= 1 - rel, f"not a top-k: a chosen block scores {worst:.6f} of the reference's choice"
    rows = past.flatten(0, 2)
    for row in rows[(rows >= 0).sum(-1) > 1][:2000]:
        used = row[row >= 0]
        assert used.unique().numel() == used.numel(), f"repeated block in {row.tolist()}"


@pytest.mark.parametrize("shape", GPU_SHAPES.values(), ids=GPU_SHAPES)
def test_select_blocks_bf16(shape: Shape, poison: None) -> None:
    q, k, _ = random_inputs(shape, torch.bfloat16)
    out = select_blocks(q, k, shape.block_size, shape.block_count)
    ref = naive_select_blocks(q, k, shape.block_size, shape.block_count)
    check_selection(q.detach(), k.detach(), out, ref, shape, rel=1e-2)


@pytest.mark.parametrize("shape", GPU_SHAPES.values(), ids=GPU_SHAPES)
def test_select_blocks_fp32(shape: Shape, poison: None) -> None:
    q, k, _ = random_inputs(shape, torch.float32)
    out = select_blocks(q, k, shape.block_size, shape.block_count)
    ref = naive_select_blocks(q, k, shape.block_size, shape.block_count)
    check_selection(q.detach(), k.detach(), out, ref, shape, rel=1e-5)
    equal_rows = (out == ref).all(-1).float().mean().item()
    assert equal_rows >= 0.99, f"only {equal_rows:.2%} of rows equal the reference"


def test_select_blocks_query_chunks_and_segments(monkeypatch: pytest.MonkeyPatch, poison: None) -> None:
    # fp32: exact products, so the indices do not depend on the tiling: the same in 14 query chunks (a
    # scratch budget of ~300 tokens), and with score tiles / top-k segments of 16 blocks instead of 64
    from ssa_kernels.select_blocks import parallel

    shape = GPU_SHAPES["g16-T4099-d64-k16"]
    q, k, _ = random_inputs(shape, torch.float32)
    whole = select_blocks(q, k, shape.block_size, shape.block_count)
    segments = parallel.select_blocks_fwd(q, k, shape.block_size, shape.block_count, 0.125, tile_blocks=16)
    row_bytes = shape.batch * shape.kv_heads * (shape.seq_len // shape.block_size) * 4
    monkeypatch.setattr(parallel, "SCRATCH_BYTES", 300 * row_bytes)
    chunked = select_blocks(q, k, shape.block_size, shape.block_count)
    assert (chunked == whole).all(-1).float().mean() == 1.0, "query chunks"
    assert (segments == whole).all(-1).float().mean() >= 0.999, (
        "segments of 16 (summation order may flip ties)"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_select_blocks_from_means_at_offsets(dtype: torch.dtype, poison: None) -> None:
    # a context-parallel rank's query runs (the load-balanced halves of CP = 4) at their global positions
    shape = GPU_SHAPES["g16-T4099-d64-k16"]._replace(seq_len=4096)
    q, k, _ = random_inputs(shape, dtype)
    whole = select_blocks(q, k, shape.block_size, shape.block_count)
    kbar = block_means(k.detach().float(), shape.block_size)
    for start in (0, 512, 2048, 3584):
        rows = select_blocks_from_means(
            q[:, start : start + 512], kbar, start, shape.block_size, shape.block_count
        )
        assert torch.equal(rows, whole[:, start : start + 512]), f"rows from {start}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_select_blocks_tie_rule(dtype: torch.dtype, poison: None) -> None:
    # every block holds the same keys: all past blocks tie and rank by ascending index
    block_size, block_count, seq_len = 16, 16, 600
    block = torch.randint(-3, 4, (2, block_size, 2, 64), device="cuda").to(dtype)
    k = block.repeat(1, seq_len // block_size + 1, 1, 1)[:, :seq_len]
    q = torch.randint(-3, 4, (2, seq_len, 32, 64), device="cuda").to(dtype)
    out = select_blocks(q, k, block_size, block_count)
    t = torch.arange(seq_len, device="cuda")[:, None]
    slot = torch.arange(1, block_count, device="cuda")[None, :]
    expected = torch.where(slot - 1 < t // block_size, slot - 1, -1)  # [T, K - 1]
    assert torch.equal(out[..., 0], (t[:, 0] // block_size).int()[None, :, None].expand(2, -1, 2))
    assert torch.equal(out[..., 1:], expected.int()[None, :, None, :].expand(2, -1, 2, -1))


def sparse_case(
    shape: Shape, dtype: torch.dtype, lse_in_loss: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs and gradients (o, lse, dq, dk, dv) of the CUDA path and the fp32 reference, same inputs; the
    loss takes lse too, or only o (the backward then gets no lse gradient)."""
    q, k, v = random_inputs(shape, dtype)
    indices = select_blocks(q, k, shape.block_size, shape.block_count)
    o, lse = sparse_attention(q, k, v, indices, shape.block_size)
    do, dlse = torch.randn_like(o), torch.randn_like(lse) * lse_in_loss
    loss = (o.float() * do).sum() + ((lse * dlse).sum() if lse_in_loss else 0)
    grads = torch.autograd.grad(loss, (q, k, v))
    ref_o, ref_lse = naive_sparse_attention(q.float(), k.float(), v.float(), indices, shape.block_size)
    ref_loss = (ref_o * do).sum() + ((ref_lse * dlse).sum() if lse_in_loss else 0)
    ref_grads = torch.autograd.grad(ref_loss, (q, k, v))
    return [o, lse, *grads], [ref_o, ref_lse, *ref_grads]


@pytest.mark.parametrize("shape", GPU_SHAPES.values(), ids=GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("lse_in_loss", [True, False], ids=["lse-grad", "o-grad-only"])
def test_sparse_attention(shape: Shape, dtype: torch.dtype, lse_in_loss: bool, poison: None) -> None:
    outs, refs = sparse_case(shape, dtype, lse_in_loss)
    tolerances = (1e-2, 1e-3, 2e-2, 2e-2, 2e-2) if dtype == torch.bfloat16 else (1e-4,) * 5
    for name, ref, out, tol in zip(("o", "lse", "dq", "dk", "dv"), refs, outs, tolerances, strict=True):
        assert out.dtype == (torch.float32 if name == "lse" else dtype), name
        assert_rel_close(name, ref, out, tol)


def test_sparse_attention_deterministic() -> None:
    shape = GPU_SHAPES["g16-B2-T517-d64-k16"]
    first, _ = sparse_case(shape, torch.bfloat16)
    torch.manual_seed(0)
    second, _ = sparse_case(shape, torch.bfloat16)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


# (batch, query length, key length, query heads, kv heads, head dim, causal)
FULL_CASES = {
    "causal-g16-B2-T1000-d64": (2, 1000, 1000, 32, 2, 64, True),
    "causal-g1-T333-d128": (1, 333, 333, 4, 4, 128, True),
    "causal-g2-T517-d64": (1, 517, 517, 4, 2, 64, True),
    "noncausal-g16-Tq200-Tk700-d64": (2, 200, 700, 16, 1, 64, False),
}


@pytest.mark.parametrize(
    ("batch", "seq_q", "seq_k", "heads", "kv_heads", "dim", "causal"),
    list(FULL_CASES.values()),
    ids=list(FULL_CASES),
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("lse_in_loss", [True, False], ids=["lse-grad", "o-grad-only"])
def test_full_attention(batch, seq_q, seq_k, heads, kv_heads, dim, causal, dtype, lse_in_loss) -> None:
    q = torch.randn(batch, seq_q, heads, dim, device="cuda", dtype=dtype, requires_grad=True)
    k, v = (
        torch.randn(batch, seq_k, kv_heads, dim, device="cuda", dtype=dtype, requires_grad=True)
        for _ in range(2)
    )
    o, lse = full_attention(q, k, v, causal=causal)
    ref_o, ref_lse = naive_full_attention(q.float(), k.float(), v.float(), causal)
    do, dlse = torch.randn_like(ref_o), torch.randn_like(ref_lse) * lse_in_loss
    loss = (o.float() * do).sum() + ((lse * dlse).sum() if lse_in_loss else 0)
    grads = torch.autograd.grad(loss, (q, k, v))
    ref_loss = (ref_o * do).sum() + ((ref_lse * dlse).sum() if lse_in_loss else 0)
    ref_grads = torch.autograd.grad(ref_loss, (q, k, v))
    tolerances = (1e-2, 1e-3, 2e-2, 2e-2, 2e-2) if dtype == torch.bfloat16 else (1e-3,) * 5
    outs, refs = [o, lse, *grads], [ref_o, ref_lse, *ref_grads]
    for name, ref, out, tol in zip(("o", "lse", "dq", "dk", "dv"), refs, outs, tolerances, strict=True):
        assert_rel_close(name, ref, out, tol)


@pytest.mark.parametrize("shape", GPU_SHAPES.values(), ids=GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_mixed_attention(shape: Shape, dtype: torch.dtype, poison: None) -> None:
    """Against the fp32 references on the same inputs, picked per head: full attention, and sparse attention
    over the blocks of the CUDA selection (an fp32 selection of its own would rank near-tied blocks
    differently, see `check_selection`; a block swapped in a row moves that row's output by tens of %)."""
    q, k, v = random_inputs(shape, dtype)
    rows = torch.arange(shape.batch * shape.kv_heads, device="cuda")
    sparse_heads = (rows % 3 == 1).view(shape.batch, shape.kv_heads)  # both modes wherever there are 2+ heads
    o = mixed_attention(q, k, v, sparse_heads, shape.block_size, shape.block_count)
    indices = select_blocks(q, k, shape.block_size, shape.block_count)
    ref_full, _ = naive_full_attention(q.float(), k.float(), v.float())
    ref_sparse, _ = naive_sparse_attention(q.float(), k.float(), v.float(), indices, shape.block_size)
    ref_o = pick_heads(ref_full, ref_sparse, sparse_heads)
    do = torch.randn_like(ref_o)
    grads = torch.autograd.grad((o.float() * do).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref_o * do).sum(), (q, k, v))
    # fp32: the tolerance of test_full_attention (the memory-efficient SDPA kernel)
    tolerances = (1e-2, 2e-2, 2e-2, 2e-2) if dtype == torch.bfloat16 else (1e-3,) * 4
    outs, refs = [o, *grads], [ref_o, *ref_grads]
    for name, ref, out, tol in zip(("o", "dq", "dk", "dv"), refs, outs, tolerances, strict=True):
        assert out.dtype == dtype, name
        assert_rel_close(name, ref, out, tol)


@pytest.mark.parametrize("weights", [(0.5, 2.0), (1.0, 0.0)], ids=["w0.5-2", "w_sf-zero"])
def test_alignment_loss_bf16(weights: tuple[float, float], poison: None) -> None:
    """The Triton alignment loss on the 40M model's shape at batch 2: loss and D within fp32 summation order
    of the reference on the same inputs, gradients within one bf16 unit in the last place (the same fp32
    value, rounded once), None for a zero weight; the same bits on a second run; no host sync."""
    shape = (2, 2048, 8, 64)
    full = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    sparse = (full.float() + 1.5 * torch.randn(shape, device="cuda")).bfloat16()  # ~half beyond beta = 1
    grad_loss = torch.tensor(0.7, device="cuda")
    ref_value = naive_alignment_loss_fwd(full, sparse)
    ref_grads = naive_alignment_loss_bwd(full, sparse, grad_loss, *weights)
    runs = []
    for sync_debug in ("default", "error"):  # the second run fails on any host sync (e.g. `.item()`)
        a, b = full.clone().requires_grad_(), sparse.clone().requires_grad_()
        torch.cuda.set_sync_debug_mode(sync_debug)
        try:
            loss, value = alignment_loss(a, b, *weights)
            loss.backward(grad_loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        runs.append((loss.detach(), value, a.grad, b.grad))
    torch.testing.assert_close(runs[0][1], ref_value, atol=0, rtol=1e-5)
    torch.testing.assert_close(runs[0][0], weights[0] * ref_value + weights[1] * ref_value, atol=0, rtol=1e-5)
    for name, ref, got in zip(("grad full", "grad sparse"), ref_grads, runs[0][2:], strict=True):
        assert (got is None) == (ref is None), name
        if ref is not None:
            assert got.dtype == torch.bfloat16, name
            torch.testing.assert_close(got, ref, atol=0, rtol=2**-7, msg=lambda m, n=name: f"{n}: {m}")
    for first, second in zip(*runs, strict=True):
        assert first is None or torch.equal(first, second), "two runs differ"


@pytest.mark.parametrize("through", ["full", "sparse"])
def test_alignment_loss_through_bf16(through: str, poison: None) -> None:
    """`alignment_loss_through` at the 40M model's shape: the gradient the passed-on output gets from above
    (autograd's transposed view of the `[s, b, h * d]` gradient, read in place) added inside the backward
    kernel, within one bf16 unit in the last place of the reference given the same added gradient."""
    shape = (2, 2048, 8, 64)
    full = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    sparse = (full.float() + 1.5 * torch.randn(shape, device="cuda")).bfloat16()
    upstream = torch.randn(2048, 2, 8 * 64, device="cuda", dtype=torch.bfloat16).view(2048, 2, 8, 64)
    upstream = upstream.transpose(0, 1)
    grad_loss = torch.tensor(
        float(full.numel()), device="cuda"
    )  # its gradient as large as the one from above
    a, b = full.clone().requires_grad_(), sparse.clone().requires_grad_()
    out, loss, _ = alignment_loss_through(a, b, 1.0, 1.0, through)
    torch.autograd.backward((out, loss), (upstream, grad_loss))
    adds = (upstream, None) if through == "full" else (None, upstream)
    ref_grads = naive_alignment_loss_bwd(full, sparse, grad_loss, 1.0, 1.0, *adds)
    for name, ref, got in zip(("grad full", "grad sparse"), ref_grads, (a.grad, b.grad), strict=True):
        assert got.dtype == torch.bfloat16, name
        torch.testing.assert_close(got, ref, atol=0, rtol=2**-7, msg=lambda m, n=name: f"{n}: {m}")
