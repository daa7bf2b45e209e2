"""mixed_attention and its reference against every (sequence, kv head) run alone in its mode; the dispatch
(each mode once, on its heads only); input checks."""

import importlib
from collections.abc import Callable

import pytest
import torch
from ssa_kernels import (
    full_attention,
    mixed_attention,
    naive_mixed_attention,
    select_blocks,
    sparse_attention,
)

from tests.kernels.helpers import SHAPES, Shape, assert_close

MODES = ("all-full", "all-sparse", "mixed", "first-sequence-sparse")
OPS = {"mixed_attention": mixed_attention, "naive_mixed_attention": naive_mixed_attention}


def random_inputs(shape: Shape) -> tuple[torch.Tensor, ...]:
    """fp32 q `[B, T, HQ, D]`, k/v `[B, T, HKV, D]` requiring grad."""
    q = torch.randn(shape.batch, shape.seq_len, shape.heads, shape.dim, requires_grad=True)
    k, v = (
        torch.randn(shape.batch, shape.seq_len, shape.kv_heads, shape.dim, requires_grad=True)
        for _ in range(2)
    )
    return q, k, v


def draw_modes(shape: Shape, modes: str) -> torch.Tensor:
    """`[B, HKV]` bool, True = sparse: none, all, a random mix with at least one head of each mode, or every
    head of sequence 0 (a pattern that a sequence / head mix-up cannot keep)."""
    num_rows = shape.batch * shape.kv_heads
    if modes == "first-sequence-sparse":
        return (torch.arange(shape.batch) == 0)[:, None].expand(-1, shape.kv_heads)
    if modes != "mixed":
        return torch.full((shape.batch, shape.kv_heads), modes == "all-sparse")
    num_sparse = int(torch.randint(1, num_rows, ()))
    return (torch.randperm(num_rows) < num_sparse).view(shape.batch, shape.kv_heads)


def heads_one_by_one(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sparse_heads: torch.Tensor,
    shape: Shape,
    scale: float | None,
) -> torch.Tensor:
    """Each sequence's kv head with its G query heads, alone, through `full_attention` or `select_blocks` +
    `sparse_attention`; the outputs concatenated back to `[B, T, HQ, D]`."""
    group = shape.heads // shape.kv_heads
    sequences = []
    for b in range(shape.batch):
        heads = []
        for h in range(shape.kv_heads):
            q_one = q[b : b + 1, :, h * group : (h + 1) * group]  # [1, T, G, D]
            k_one, v_one = k[b : b + 1, :, h : h + 1], v[b : b + 1, :, h : h + 1]  # [1, T, 1, D]
            if sparse_heads[b, h]:
                indices = select_blocks(q_one, k_one, shape.block_size, shape.block_count, scale)
                heads.append(sparse_attention(q_one, k_one, v_one, indices, shape.block_size, scale)[0])
            else:
                heads.append(full_attention(q_one, k_one, v_one, scale=scale)[0])
        sequences.append(torch.cat(heads, dim=2))
    return torch.cat(sequences, dim=0)


CASES = {
    f"{name}-{modes}": (shape, modes)
    for name, shape in SHAPES.items()
    for modes in MODES
    if modes != "mixed" or shape.batch * shape.kv_heads > 1  # one head cannot mix
    if modes != "first-sequence-sparse" or shape.batch > 1
}


@pytest.mark.parametrize("op", OPS.values(), ids=OPS)
@pytest.mark.parametrize(("shape", "modes"), CASES.values(), ids=CASES)
@pytest.mark.parametrize("scale", [None, 0.3], ids=["default-scale", "scale-0.3"])
def test_equals_heads_one_by_one(
    op: Callable[..., torch.Tensor], shape: Shape, modes: str, scale: float | None
) -> None:
    q, k, v = random_inputs(shape)
    sparse_heads = draw_modes(shape, modes)
    ref = heads_one_by_one(q, k, v, sparse_heads, shape, scale)
    out = op(q, k, v, sparse_heads, shape.block_size, shape.block_count, scale)
    assert out.dtype == q.dtype
    assert_close("o", ref, out, 1e-5, 1e-5)
    do = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * do).sum(), (q, k, v))
    grads = torch.autograd.grad((out * do).sum(), (q, k, v))
    for name, ref_grad, grad in zip(("dq", "dk", "dv"), ref_grads, grads, strict=True):
        assert_close(name, ref_grad, grad, 1e-5, 1e-5)


@pytest.mark.parametrize("modes", MODES)
def test_each_mode_runs_once_on_its_heads(modes: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One launch per mode present, over exactly its heads' rows; a batch in one mode is passed whole."""
    module = importlib.import_module("ssa_kernels.mixed_attention")  # the package exports the function

    shape = SHAPES["g4-B2-T64-bs16-k3-whole-blocks"]
    q, k, v = random_inputs(shape)
    sparse_heads = draw_modes(shape, modes)
    calls = []
    for name in ("full_attention", "sparse_attention"):
        op = getattr(module, name)

        def spy(q_rows, *args, name=name, op=op, **kwargs):
            calls.append((name, tuple(q_rows.shape)))
            return op(q_rows, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    mixed_attention(q, k, v, sparse_heads, shape.block_size, shape.block_count)
    num_sparse = int(sparse_heads.sum())
    rows = (shape.seq_len, shape.heads // shape.kv_heads, shape.dim)  # one row: [T, G, D]
    if num_sparse in (0, sparse_heads.numel()):  # one mode: the whole batch at once
        expected = [("sparse_attention" if num_sparse else "full_attention", tuple(q.shape))]
    else:
        expected = [
            ("full_attention", (sparse_heads.numel() - num_sparse, *rows)),
            ("sparse_attention", (num_sparse, *rows)),
        ]
    assert calls == expected


def valid_arguments() -> dict:
    """Keyword arguments of a valid call: B = 2, T = 8, HQ = 4, HKV = 2, D = 4."""
    q, k, v = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 4), torch.randn(2, 8, 2, 4)
    sparse_heads = torch.tensor([[True, False], [False, False]])
    return dict(q=q, k=k, v=v, sparse_heads=sparse_heads, block_size=4, block_count=2)


BAD_INPUTS = {  # the arguments changed, what the error must say
    "heads-dtype": (dict(sparse_heads=torch.zeros(2, 2, dtype=torch.int32)), "sparse_heads must be a bool"),
    "heads-list": (dict(sparse_heads=[[True, False], [False, False]]), "sparse_heads must be a bool"),
    "heads-per-query-head": (
        dict(sparse_heads=torch.zeros(2, 4, dtype=torch.bool)),
        r"\[B, HKV\] = \[2, 2\]",
    ),
    "heads-broadcast": (dict(sparse_heads=torch.zeros(1, 2, dtype=torch.bool)), r"\[B, HKV\] = \[2, 2\]"),
    "heads-device": (dict(sparse_heads=torch.zeros(2, 2, dtype=torch.bool, device="meta")), "is on meta"),
    "block-size": (dict(block_size=0), "block_size must be >= 1"),
    "block-count": (dict(block_count=0), "block_count must be >= 1"),
    "scale": (dict(scale=-1.0), "scale must be > 0"),
    "kv-heads": (dict(k=torch.randn(2, 8, 3, 4), v=torch.randn(2, 8, 3, 4)), "multiple of key/value heads"),
    "seq-len": (dict(k=torch.randn(2, 9, 2, 4), v=torch.randn(2, 9, 2, 4)), "same sequence length"),
}


@pytest.mark.parametrize("op", OPS.values(), ids=OPS)
@pytest.mark.parametrize(("change", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS)
def test_bad_inputs(op: Callable[..., torch.Tensor], change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        op(**{**valid_arguments(), **change})
