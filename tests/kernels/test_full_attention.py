"""full_attention against torch SDPA and a dense log-sum-exp, gradcheck, dtypes and input checks; the backend
API (forward with lse, backward from o and lse) against autograd of the reference, also for key subsets."""

import pytest
import torch
import torch.nn.functional as F
from ssa_kernels import full_attention, merge
from ssa_kernels.full_attention import full_attention_backward, full_attention_forward

from tests.kernels.helpers import assert_close

# (query length, key length, query heads, kv heads, causal)
CASES = {
    "causal-g1-T37": (37, 37, 2, 2, True),
    "causal-g2-T63": (63, 63, 4, 2, True),
    "causal-g16-T20": (20, 20, 16, 1, True),
    "noncausal-g2-Tq19-Tk45": (19, 45, 4, 2, False),
    "noncausal-g16-Tq30-Tk7": (30, 7, 16, 1, False),
}


@pytest.mark.parametrize(
    ("seq_q", "seq_k", "heads", "kv_heads", "causal"), list(CASES.values()), ids=list(CASES)
)
def test_matches_sdpa_and_logsumexp(seq_q, seq_k, heads, kv_heads, causal) -> None:
    q = torch.randn(2, seq_q, heads, 16, dtype=torch.float64)
    k, v = (torch.randn(2, seq_k, kv_heads, 16, dtype=torch.float64) for _ in range(2))
    scale = 0.3
    o, lse = full_attention(q, k, v, causal=causal, scale=scale)
    q_, k_, v_ = (x.transpose(1, 2) for x in (q, k, v))  # [B, T, H, D] -> [B, H, T, D]
    ref_o = F.scaled_dot_product_attention(q_, k_, v_, is_causal=causal, scale=scale, enable_gqa=True)
    assert_close("o", ref_o.transpose(1, 2), o, 1e-10, 1e-10)
    k_per_head = k.repeat_interleave(heads // kv_heads, dim=2)  # [B, TK, HQ, D]
    logits = torch.einsum("bthd,bshd->bhts", q, k_per_head) * scale
    if causal:
        logits = logits.masked_fill(torch.ones(seq_q, seq_k, dtype=torch.bool).triu(1), float("-inf"))
    assert_close("lse", torch.logsumexp(logits, -1).transpose(1, 2), lse, 1e-10, 1e-10)


@pytest.mark.parametrize(
    ("seq_q", "seq_k", "causal"), [(7, 7, True), (5, 9, False)], ids=["causal", "noncausal"]
)
def test_gradcheck(seq_q: int, seq_k: int, causal: bool) -> None:
    q = torch.randn(1, seq_q, 4, 3, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, seq_k, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda *x: full_attention(*x, causal=causal), (q, k, v))


def test_bf16_inputs() -> None:
    q, k, v = torch.randn(1, 33, 4, 16), torch.randn(1, 33, 2, 16), torch.randn(1, 33, 2, 16)
    ref_o, ref_lse = full_attention(q.double(), k.double(), v.double())
    o, lse = full_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert o.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert_close("o", ref_o, o, 5e-2, 5e-2)
    assert_close("lse", ref_lse, lse, 5e-2, 5e-2)


@pytest.mark.parametrize(
    ("q", "k", "v", "causal", "message"),
    [
        (torch.randn(1, 8, 4), torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4), True, "q must be"),
        (torch.randn(1, 8, 3, 4), torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4), True, "multiple"),
        (torch.randn(1, 8, 2, 4), torch.randn(1, 9, 2, 4), torch.randn(1, 9, 2, 4), True, "same sequence"),
        (torch.randn(2, 8, 2, 4), torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4), False, "batch size"),
        (torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4), torch.randn(1, 7, 2, 4), False, "shape of k"),
        (torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4).double(), torch.randn(1, 8, 2, 4), False, "dtype"),
        (torch.randn(1, 0, 2, 4), torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4), False, "empty"),
    ],
    ids=["rank", "heads", "causal-lengths", "batch", "v-shape", "dtype", "empty"],
)
def test_bad_inputs(q, k, v, causal, message) -> None:
    with pytest.raises(ValueError, match=message):
        full_attention(q, k, v, causal=causal)


def _weights(gen: torch.Generator, *like: torch.Tensor) -> list[torch.Tensor]:
    return [torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in like]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize(
    ("seq_q", "seq_k", "heads", "kv_heads", "causal"), list(CASES.values()), ids=list(CASES)
)
def test_backward_from_lse_matches_autograd(seq_q, seq_k, heads, kv_heads, causal, dtype) -> None:
    """`full_attention_backward(o, lse, do, dlse)` == autograd of the reference, with and without dlse."""
    gen = torch.Generator().manual_seed(seq_q * 100 + seq_k)
    q = torch.randn(2, seq_q, heads, 8, generator=gen, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(2, seq_k, kv_heads, 8, generator=gen, dtype=dtype, requires_grad=True) for _ in "kv")
    o, lse = full_attention(q, k, v, causal=causal, scale=0.4)
    o_api, lse_api = full_attention_forward(q, k, v, causal=causal, scale=0.4)
    assert not o_api.requires_grad and torch.equal(o_api, o.detach()) and torch.equal(lse_api, lse.detach())
    do, dlse = _weights(gen, o, lse)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for with_lse in (False, True):
        ref = torch.autograd.grad(
            (o, lse) if with_lse else (o,), (q, k, v), (do, dlse) if with_lse else (do,), retain_graph=True
        )
        got = full_attention_backward(
            q, k, v, o_api, lse_api, do, dlse if with_lse else None, causal=causal, scale=0.4
        )
        for name, r, g in zip("qkv", ref, got, strict=True):
            assert_close(f"d{name} (dlse={with_lse})", r, g, tol, tol)


def test_backward_of_key_subsets_from_merged_lse() -> None:
    """Keys split in two sets: each set's backward from the *merged* o and lse gives its share; together they
    are the gradient of attention over all keys (what ring attention relies on)."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 11, 4, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 19, 2, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in "kv")
    o, lse = full_attention(q, k, v, causal=False)
    do, dlse = _weights(gen, o, lse)
    ref = torch.autograd.grad((o, lse), (q, k, v), (do, dlse))
    parts = [(slice(0, 7)), slice(7, 19)]
    pieces = [full_attention_forward(q, k[:, p], v[:, p], causal=False) for p in parts]
    o_m, lse_m = merge(*pieces[0], *pieces[1])
    dq = torch.zeros_like(q)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    for p in parts:
        dq_i, dk_i, dv_i = full_attention_backward(q, k[:, p], v[:, p], o_m, lse_m, do, dlse, causal=False)
        dq += dq_i
        dk[:, p], dv[:, p] = dk_i, dv_i
    for name, r, g in zip("qkv", ref, (dq, dk, dv), strict=True):
        assert_close(f"d{name}", r, g, 1e-10, 1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_sdpa_backend_matches_reference(dtype, causal) -> None:
    """The fused backend's forward, and its backward from the o and lse of a key *superset* (non-causal: the
    first 128 of 384 keys) with dlse, against the fp64 reference from the same o and lse."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 256, 32, 64, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 256 if causal else 384, 2, 64, generator=gen, dtype=torch.float64) for _ in "kv")
    do = torch.randn(q.shape, generator=gen, dtype=torch.float64)
    dlse = torch.randn(q.shape[:3], generator=gen, dtype=torch.float64)
    o, lse = full_attention_forward(q, k, v, causal=causal)
    keys = slice(None) if causal else slice(0, 128)
    ref = full_attention_backward(q, k[:, keys], v[:, keys], o, lse, do, dlse, causal=causal)
    cuda = [x.cuda().to(dtype) for x in (q, k, v)]
    o_f, lse_f = full_attention_forward(*cuda, causal=causal, backend="sdpa")
    got = full_attention_backward(
        cuda[0],
        cuda[1][:, keys],
        cuda[2][:, keys],
        o.cuda().to(dtype),
        lse.cuda().float(),
        do.cuda().to(dtype),
        dlse.cuda().float(),
        causal=causal,
        backend="sdpa",
    )
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-3  # of the largest magnitude
    for name, r, g in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *ref), (o_f, lse_f, *got), strict=True):
        error = (g.double().cpu() - r).abs().max() / r.abs().max()
        assert error < tol, f"{name}: max error {error:.2e} of the largest magnitude"
