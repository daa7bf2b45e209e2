"""full_attention against torch SDPA and a dense log-sum-exp, gradcheck, dtypes and input checks."""

import pytest
import torch
import torch.nn.functional as F
from ssa_kernels import full_attention

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
