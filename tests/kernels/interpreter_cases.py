"""Triton kernels under the interpreter on CPU, against the references; run by test_interpreter.py.

`TRITON_INTERPRET=1` must be set before triton is first imported, so these cases run in a child process
(`python -m tests.kernels.interpreter_cases`) that prints one JSON line `{case: error or null}`. Shapes are
tiny: the interpreter executes every program instance in Python.
"""

import json
import os
import traceback
from collections.abc import Callable

import torch

from tests.kernels.helpers import SHAPES, Shape, assert_close

# (name, shape): few, small, covering GQA 1/2/16, ragged lengths, batch > 1, D not a power of two
SELECT_CASES = ["g1-B2-T37-bs4-k3", "g16-T100-bs4-k8", "g2-B2-T37-bs16-k8-more-than-exist"]
SPARSE_CASES = {
    "g1-B2-T37-bs4-k3": SHAPES["g1-B2-T37-bs4-k3"],
    "g16-T40-bs4-k8": Shape(1, 40, 16, 1, 8, 4, 8),
    "g3-T50-d20-bs8-k3": Shape(1, 50, 6, 2, 20, 8, 3),
}


def poison_empty() -> None:
    """Make `torch.empty` / `torch.empty_like` fill NaN (floats) or -7 (integers): unwritten output shows."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(x: torch.Tensor) -> torch.Tensor:
        return x.fill_(float("nan") if x.is_floating_point() else -7)

    torch.empty = lambda *a, **kw: fill(empty(*a, **kw))
    torch.empty_like = lambda *a, **kw: fill(empty_like(*a, **kw))


def select_case(shape: Shape) -> None:
    """Triton selection (public op, dispatched under the interpreter) equals the fp32 reference exactly."""
    from ssa_kernels import select_blocks
    from ssa_kernels.select_blocks import naive_select_blocks

    q = torch.randn(shape.batch, shape.seq_len, shape.heads, shape.dim)
    k = torch.randn(shape.batch, shape.seq_len, shape.kv_heads, shape.dim)
    out = select_blocks(q, k, shape.block_size, shape.block_count)
    ref = naive_select_blocks(q, k, shape.block_size, shape.block_count)
    assert torch.equal(out, ref), f"{(out != ref).sum()} indices differ"


def chunked_select_case() -> None:
    """Query chunks (a scratch budget of 40 tokens) and score tiles / top-k segments of 16 blocks."""
    from ssa_kernels.select_blocks import naive_select_blocks, parallel

    budget = parallel.SCRATCH_BYTES
    parallel.SCRATCH_BYTES = 2 * 2 * (150 // 4) * 4 * 40  # B * HKV * NB * fp32 * 40 tokens
    try:
        q, k = torch.randn(2, 150, 4, 8), torch.randn(2, 150, 2, 8)
        out = parallel.select_blocks_fwd(q, k, 4, 5, 8**-0.5, tile_blocks=16)
        ref = naive_select_blocks(q, k, 4, 5)
        assert torch.equal(out, ref), f"{(out != ref).sum()} indices differ"
    finally:
        parallel.SCRATCH_BYTES = budget


def offset_select_case() -> None:
    """`select_blocks_from_means` (a context-parallel rank's queries at their global positions): the rows of
    the whole-sequence reference."""
    from ssa_kernels import select_blocks_from_means
    from ssa_kernels.select_blocks import naive_select_blocks
    from ssa_kernels.select_blocks.naive import block_means

    q, k = torch.randn(2, 96, 8, 8), torch.randn(2, 96, 2, 8)
    ref, kbar = naive_select_blocks(q, k, 4, 6), block_means(k, 4)
    for start, stop in [(0, 24), (24, 48), (72, 96), (5, 30)]:
        out, expected = select_blocks_from_means(q[:, start:stop], kbar, start, 4, 6), ref[:, start:stop]
        assert torch.equal(out, expected), f"rows {start}:{stop}: {(out != expected).sum()} differ"


def tie_case() -> None:
    """Equal scores rank the lower block first (every block holds the same keys)."""
    from ssa_kernels.select_blocks.parallel import parallel_select_blocks

    block_size, block_count, seq_len = 4, 5, 30
    block = torch.randint(-3, 4, (1, block_size, 2, 8)).float()
    k = block.repeat(1, seq_len // block_size + 1, 1, 1)[:, :seq_len]
    q = torch.randint(-3, 4, (1, seq_len, 8, 8)).float()
    out = parallel_select_blocks(q, k, block_size, block_count)
    for t in range(seq_len):
        own = t // block_size
        past = list(range(min(own, block_count - 1)))
        expected = [own, *past] + [-1] * (block_count - 1 - len(past))
        assert out[0, t].tolist() == [expected, expected], f"t={t}: {out[0, t].tolist()}"


def sparse_case(shape: Shape, lse_in_loss: bool = True) -> None:
    """Triton sparse attention: o, lse and all three gradients (through o and lse, or o alone) match the
    reference."""
    from ssa_kernels import sparse_attention
    from ssa_kernels.select_blocks import naive_select_blocks
    from ssa_kernels.sparse_attention import naive_sparse_attention

    q = torch.randn(shape.batch, shape.seq_len, shape.heads, shape.dim, requires_grad=True)
    k, v = (
        torch.randn(shape.batch, shape.seq_len, shape.kv_heads, shape.dim, requires_grad=True)
        for _ in range(2)
    )
    indices = naive_select_blocks(q, k, shape.block_size, shape.block_count)
    o, lse = sparse_attention(q, k, v, indices, shape.block_size)
    ref_o, ref_lse = naive_sparse_attention(q, k, v, indices, shape.block_size)
    do, dlse = torch.randn_like(o), torch.randn_like(lse) * lse_in_loss
    grads = torch.autograd.grad((o * do).sum() + ((lse * dlse).sum() if lse_in_loss else 0), (q, k, v))
    ref_grads = torch.autograd.grad((ref_o * do).sum() + (ref_lse * dlse).sum(), (q, k, v))
    names = ("o", "lse", "dq", "dk", "dv")
    for name, ref, out in zip(names, (ref_o, ref_lse, *ref_grads), (o, lse, *grads), strict=True):
        assert_close(name, ref, out, 1e-5, 1e-5)


def sparse_offset_case(start: int, rows: int, num_keys: int) -> None:
    """Triton sparse attention of query rows at positions `start …` against `num_keys` keys (`q_start`):
    o, lse, the gradients, and the backward from a given (o, lse), against the reference."""
    from ssa_kernels import sparse_attention
    from ssa_kernels.select_blocks import naive_select_blocks
    from ssa_kernels.sparse_attention import naive_sparse_attention, sparse_attention_backward

    seq_len = max(num_keys, start + rows)
    q = torch.randn(2, seq_len, 4, 16)
    k, v = torch.randn(2, seq_len, 2, 16), torch.randn(2, seq_len, 2, 16)
    indices = naive_select_blocks(q, k, 4, 3)[:, start : start + rows]
    q = q[:, start : start + rows].clone().requires_grad_()
    k, v = (x[:, :num_keys].clone().requires_grad_() for x in (k, v))
    o, lse = sparse_attention(q, k, v, indices, 4, q_start=start)
    ref_o, ref_lse = naive_sparse_attention(q, k, v, indices, 4, q_start=start)
    do, dlse = torch.randn_like(o), torch.randn_like(lse)
    grads = torch.autograd.grad((o, lse), (q, k, v), (do, dlse))
    ref_grads = torch.autograd.grad((ref_o, ref_lse), (q, k, v), (do, dlse))
    api = sparse_attention_backward(q, k, v, indices, ref_o, ref_lse, do, dlse, 4, q_start=start)
    names = ("o", "lse", "dq", "dk", "dv", "dq api", "dk api", "dv api")
    for name, ref, out in zip(
        names, (ref_o, ref_lse, *ref_grads, *ref_grads), (o, lse, *grads, *api), strict=True
    ):
        assert_close(name, ref, out, 1e-5, 1e-5)


def sparse_split_dkdv_case(chunk: int) -> None:
    """dk, dv with every key block's reverse list (up to 64 tokens here) cut into items of `chunk` tokens: the
    reference's gradients, the same bits on a second run, and the values of one item per block."""
    from ssa_kernels.select_blocks import naive_select_blocks
    from ssa_kernels.sparse_attention import naive_sparse_attention
    from ssa_kernels.sparse_attention.parallel import sparse_attention_bwd, sparse_attention_fwd

    q, k, v = torch.randn(2, 64, 4, 16), torch.randn(2, 64, 2, 16), torch.randn(2, 64, 2, 16)
    indices = naive_select_blocks(q, k, 4, 4)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_o, _ = naive_sparse_attention(*leaves, indices, 4)
    do = torch.randn_like(ref_o)
    ref_grads = torch.autograd.grad(ref_o, leaves, do)
    o, lse = sparse_attention_fwd(q, k, v, indices, 4, 16**-0.5)
    runs = [
        sparse_attention_bwd(q, k, v, indices, o, lse, do, None, 4, 16**-0.5, dkdv_chunk=c)
        for c in (chunk, chunk, 64)
    ]
    for name, ref, got, again, whole in zip(("dq", "dk", "dv"), ref_grads, *runs, strict=True):
        assert_close(name, ref, got, 1e-5, 1e-5)
        assert torch.equal(got, again), f"{name}: a second run differs"
        assert_close(f"{name} unsplit", whole, got, 1e-6, 1e-6)


# (name, shape, dtype, (w_fs, w_sf)): odd numel (one masked program), several programs (3 of 4096), each
# input dtype, a zero weight on either side
ALIGNMENT_CASES = {
    "fp32-3x37x5-w0.5-2": ((3, 37, 5), torch.float32, (0.5, 2.0)),
    "bf16-2x37x8x16-w1-1": ((2, 37, 8, 16), torch.bfloat16, (1.0, 1.0)),
    "fp16-3x37x5-w0-1": ((3, 37, 5), torch.float16, (0.0, 1.0)),
    "fp32-2x37x8x16-w2-0": ((2, 37, 8, 16), torch.float32, (2.0, 0.0)),
}
# the fp32 math of both is the same, in other orders only in the forward's sum: fp32 within 1e-6; 16-bit
# gradients (the same fp32 value rounded once) within one unit in the last place of the input dtype, fp16's
# subnormals within one step: dtype -> (atol, rtol)
ALIGNMENT_TOLERANCES = {torch.float32: (0, 1e-6), torch.bfloat16: (0, 2**-7), torch.float16: (2**-24, 2**-10)}


def alignment_case(shape: tuple[int, ...], dtype: torch.dtype, weights: tuple[float, float]) -> None:
    """Triton alignment loss (public op, dispatched under the interpreter): loss, D and both gradients
    (None for a zero weight) against the reference on the same inputs, the differences beyond beta = 1 for
    about half of the elements; the same bits on a second run."""
    from ssa_kernels import alignment_loss
    from ssa_kernels.alignment_loss import naive_alignment_loss_bwd, naive_alignment_loss_fwd

    full = torch.randn(shape).to(dtype)
    sparse = (full.float() + 1.5 * torch.randn(shape)).to(dtype)
    grad_loss = torch.tensor(0.7)
    ref_value = naive_alignment_loss_fwd(full, sparse)
    ref_loss = weights[0] * ref_value + weights[1] * ref_value
    ref_grads = naive_alignment_loss_bwd(full, sparse, grad_loss, *weights)
    runs = []
    for _ in range(2):
        a, b = full.clone().requires_grad_(), sparse.clone().requires_grad_()
        loss, value = alignment_loss(a, b, *weights)
        loss.backward(grad_loss)
        runs.append((loss.detach(), value, a.grad, b.grad))
    assert_close("value", ref_value, runs[0][1], 0, 1e-6)
    assert_close("loss", ref_loss, runs[0][0], 0, 1e-6)
    for name, ref, got in zip(("grad full", "grad sparse"), ref_grads, runs[0][2:], strict=True):
        assert (got is None) == (ref is None), f"{name}: {got is None=} {ref is None=}"
        if ref is not None:
            assert got.dtype == dtype, f"{name}: {got.dtype}"
            assert_close(name, ref, got, *ALIGNMENT_TOLERANCES[dtype])
    for name, first, second in zip(("loss", "value", "grad full", "grad sparse"), *runs, strict=True):
        assert first is None or torch.equal(first, second), f"{name} differs between two runs"


def alignment_layout_case() -> None:
    """The launchers on non-contiguous inputs (a transposed view), with programs of 64 elements: 9 programs,
    the last one masked."""
    from ssa_kernels.alignment_loss import naive_alignment_loss_bwd, naive_alignment_loss_fwd
    from ssa_kernels.alignment_loss.parallel import alignment_loss_bwd, alignment_loss_fwd

    full, sparse = torch.randn(5, 111).t(), torch.randn(5, 111).t()  # [111, 5], 555 elements, strided
    grad_loss = torch.tensor(1.3)
    value = alignment_loss_fwd(full, sparse, block=64, warps=1)
    grads = alignment_loss_bwd(full, sparse, grad_loss, 0.5, 2.0, block=64, warps=1)
    assert_close("value", naive_alignment_loss_fwd(full, sparse), value, 0, 1e-6)
    ref_grads = naive_alignment_loss_bwd(full, sparse, grad_loss, 0.5, 2.0)
    for name, ref, got in zip(("grad full", "grad sparse"), ref_grads, grads, strict=True):
        assert_close(name, ref, got, 0, 1e-6)


def alignment_through_case(dtype: torch.dtype, layout: str, weights: tuple[float, float]) -> None:
    """`alignment_loss_through` under the interpreter: the gradient the passed-on input gets from above,
    added in the backward kernel, read in place from autograd's transposed view of a `[s, b, h * d]` tensor
    (`layout` "transposed"), or from a copy (`"permuted"`: the last dims not one row); against the
    reference given the same added gradient."""
    from ssa_kernels import alignment_loss_through
    from ssa_kernels.alignment_loss import naive_alignment_loss_bwd

    shape = (2, 37, 8, 16)
    full = torch.randn(shape).to(dtype)
    sparse = (full.float() + 1.5 * torch.randn(shape)).to(dtype)
    if layout == "transposed":
        upstream = torch.randn(shape[1], shape[0], shape[2] * shape[3]).to(dtype).view(37, 2, 8, 16)
        upstream = upstream.transpose(0, 1)
    else:
        upstream = torch.randn(2, 37, 16, 8).to(dtype).transpose(2, 3)
    assert not upstream.is_contiguous()
    for through in ("full", "sparse"):
        a, b = full.clone().requires_grad_(), sparse.clone().requires_grad_()
        out, loss, _ = alignment_loss_through(a, b, *weights, through)
        assert torch.equal(out, a if through == "full" else b), f"{through}: not the input passed on"
        torch.autograd.backward((out, loss), (upstream, torch.tensor(0.7)))
        ref_grads = naive_alignment_loss_bwd(
            full,
            sparse,
            torch.tensor(0.7),
            *weights,
            upstream if through == "full" else None,
            upstream if through == "sparse" else None,
        )
        for name, ref, got in zip(("grad full", "grad sparse"), ref_grads, (a.grad, b.grad), strict=True):
            assert (got is None) == (ref is None), f"{through} {name}: {got is None=} {ref is None=}"
            if ref is not None:
                assert_close(f"{through} {name}", ref, got, *ALIGNMENT_TOLERANCES[dtype])


def cases() -> dict[str, Callable[[], None]]:
    """Every case by name."""
    found: dict[str, Callable[[], None]] = {
        f"select-{n}": lambda n=n: select_case(SHAPES[n]) for n in SELECT_CASES
    }
    found["select-tie-rule"] = tie_case
    found["select-from-means-at-offsets"] = offset_select_case
    found["select-query-chunks-small-segments"] = chunked_select_case
    found.update({f"sparse-{n}": lambda s=s: sparse_case(s) for n, s in SPARSE_CASES.items()})
    found["sparse-g16-T40-bs4-k8-o-grad-only"] = lambda: sparse_case(SPARSE_CASES["g16-T40-bs4-k8"], False)
    found["sparse-query-offset-inside-keys"] = lambda: sparse_offset_case(16, 24, 64)
    found["sparse-query-offset-after-keys-partial-block"] = lambda: sparse_offset_case(42, 12, 42)
    found.update({f"sparse-dkdv-items-of-{c}-tokens": lambda c=c: sparse_split_dkdv_case(c) for c in (1, 3)})
    found.update({f"alignment-{n}": lambda c=c: alignment_case(*c) for n, c in ALIGNMENT_CASES.items()})
    found["alignment-strided-inputs-small-programs"] = alignment_layout_case
    for dtype, layout, weights in [
        (torch.float32, "transposed", (0.5, 2.0)),
        (torch.bfloat16, "transposed", (1.0, 0.0)),
        (torch.float32, "permuted", (0.0, 1.0)),
    ]:
        found[f"alignment-through-{layout}-{str(dtype)[6:]}-w{weights[0]:g}-{weights[1]:g}"] = (
            lambda c=(dtype, layout, weights): alignment_through_case(*c)
        )
    return found


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    import warnings

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # numpy's log2(0) inside the interpreter
    poison_empty()
    results = {}
    for name, case in cases().items():
        torch.manual_seed(0)
        try:
            case()
            results[name] = None
        except Exception:  # report every failure to the parent test, one per case
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
