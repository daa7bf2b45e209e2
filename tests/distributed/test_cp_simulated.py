"""Context-parallel attention in one process: `SimulatedComm` plays each rank of a P-rank group with the
real peers' data, so every rank's outputs, lses and dq equal its rows of the single-process ops (the same
work as on P devices: what `tools/bench_cp.py --simulate` times); with `comm="allgather"` the dK/dV that the
ranks hand to the reduce-scatter sum to the single-process gradient. On CPU in fp64 (tight), on CUDA in bf16
against an fp64 reference (cuDNN / flash backward from the merged lse, the Triton sparse kernel at a query
offset)."""

from __future__ import annotations

import pytest
import ssa_kernels
import torch
from ssa_kernels.select_blocks.naive import block_means

from ssa_pretrain.parallel import (
    context_parallel_select_blocks,
    context_parallel_ssa_attention,
    split_sequence,
    unsplit_sequence,
)
from ssa_pretrain.parallel.collectives import SimulatedComm
from tests.kernels.helpers import assert_close

DEVICES = [
    pytest.param("cpu", torch.float64, 1e-10, id="cpu-fp64"),
    pytest.param(
        "cuda", torch.bfloat16, 3e-2, id="cuda-bf16",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
    ),
]  # fmt: skip


class CapturingComm(SimulatedComm):
    """Keeps what this rank hands to the reduce-scatter: `[P, 2, B, 2C, HKV, D]`, slot p for rank p."""

    sent: torch.Tensor | None = None

    def reduce_scatter(self, x: torch.Tensor) -> torch.Tensor:
        self.sent = x.detach().clone()
        return super().reduce_scatter(x)


def _close(name: str, ref: torch.Tensor, out: torch.Tensor, tol: float) -> None:
    if out.dtype == torch.float64:
        assert_close(name, ref, out, tol, tol)
    else:  # bf16: error relative to the largest magnitude
        error = ((out.double() - ref).abs().max() / ref.abs().max()).item()
        assert error < tol, f"{name}: max error {error:.2e} of the largest magnitude"


@pytest.mark.parametrize("comm", ["ring", "allgather"])
@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize(("device", "dtype", "tol"), DEVICES)
def test_every_simulated_rank_matches_one_process(device, dtype, tol, size, comm):
    big = device == "cuda"
    seq_len, heads, kv_heads, dim, bs, kk = (1024, 32, 2, 64, 16, 16) if big else (64, 4, 2, 8, 4, 3)
    gen = torch.Generator().manual_seed(size)
    full = [
        torch.randn(1, seq_len, h, dim, generator=gen, dtype=torch.float64)
        for h in (heads, kv_heads, kv_heads)
    ]
    work = [x.to(device, dtype) for x in full]
    shares = [[split_sequence(x, p, size, dim=1, block_size=bs) for x in work] for p in range(size)]
    kv = [torch.stack([k, v]) for _, k, v in shares]
    means = [block_means(k.float() if k.dtype != torch.float64 else k, bs) for _, k, _ in shares]

    def peer(kind: str, p: int, x: torch.Tensor) -> torch.Tensor:
        return {"kv": kv[p], "means": means[p]}.get(kind, x)

    # the reference attends with the blocks the ranks select (selection itself: tests/distributed/cp_cases.py)
    picks = [
        context_parallel_select_blocks(q, k, bs, kk, SimulatedComm(p, size, peer))
        for p, (q, k, _) in enumerate(shares)
    ]
    indices = unsplit_sequence(picks, dim=1).cpu()
    ref64 = [x.double().cpu().requires_grad_() for x in work]
    refs = (*ssa_kernels.full_attention(*ref64), *ssa_kernels.sparse_attention(*ref64, indices, bs))
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(r.shape, generator=gen, dtype=torch.float64) for r in refs[::2]]  # on o only
    ref_grads = torch.autograd.grad(refs[::2], ref64, weights)

    sent = []
    for rank in range(size):
        channel = CapturingComm(rank, size, peer)
        q, k, v = (x.clone().requires_grad_() for x in shares[rank])
        (o_full, lse_full), (o_sparse, lse_sparse) = context_parallel_ssa_attention(
            q, k, v, bs, kk, channel, comm=comm
        )
        for name, got, ref in zip(
            ("o_full", "lse_full", "o_sparse", "lse_sparse"),
            (o_full, lse_full, o_sparse, lse_sparse),
            refs,
            strict=True,
        ):
            _close(f"rank {rank} {name}", split_sequence(ref.detach(), rank, size), got.cpu(), tol)
        local_w = [split_sequence(w, rank, size).to(device, dtype) for w in weights]
        dq, _, _ = torch.autograd.grad((o_full, o_sparse), (q, k, v), local_w)
        _close(f"rank {rank} dq", split_sequence(ref_grads[0], rank, size), dq.cpu(), tol)
        sent.append(channel.sent)
    if comm == "allgather":  # what the reduce-scatter would hand rank p: the sum of slot p over the ranks
        for p in range(size):
            dkv = sum(s[p] for s in sent).cpu()
            for j, name in enumerate("kv"):
                _close(f"d{name} of rank {p}", split_sequence(ref_grads[1 + j], p, size), dkv[j], tol)
