"""The checks run inside every rank of a context-parallel world (gloo, CPU), and the worker that runs them.

Every rank draws the same full-sequence inputs from a fixed seed, computes the single-process `ssa_kernels`
reference on the whole sequence itself, runs the context-parallel op on its share and compares its share of
the outputs and of every gradient. A check returns normally or raises; the worker records which.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import ssa_kernels
import torch
import torch.distributed as dist

from ssa_pretrain.parallel import (
    all_gather,
    context_parallel_full_attention,
    context_parallel_select_blocks,
    context_parallel_sparse_attention,
    context_parallel_ssa_attention,
    gather_sequence,
    global_positions,
    split_sequence,
)
from tests.kernels.helpers import assert_close

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
BLOCK_SIZE = 4


def _inputs(
    seed: int,
    seq_len: int,
    dtype: torch.dtype,
    heads: int = 4,
    kv_heads: int = 2,
    dim: int = 8,
    batch: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-sequence q `[B, T, HQ, D]`, k, v `[B, T, HKV, D]`, the same on every rank."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq_len, heads, dim, generator=gen, dtype=dtype)
    k = torch.randn(batch, seq_len, kv_heads, dim, generator=gen, dtype=dtype)
    v = torch.randn(batch, seq_len, kv_heads, dim, generator=gen, dtype=dtype)
    return q, k, v


def _noncontiguous_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random values of `x`'s shape whose strides are not contiguous (as gradients after a permute)."""
    return torch.randn(*reversed(x.shape), generator=gen, dtype=x.dtype).permute(*reversed(range(x.ndim)))


def _compare_branches(
    rank: int,
    world: int,
    full_seq: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    reference: Callable[..., tuple[torch.Tensor, ...]],
    parallel: Callable[..., tuple[torch.Tensor, ...]],
    seed: int,
) -> None:
    """Outputs and q/k/v gradients of `parallel` on the shares == this rank's share of `reference`.

    Both return a flat tuple of `(o, lse)` pairs; the loss weighs every o and lse with random
    full-sequence weights (non-contiguous o weights, so the ring's incoming gradient is non-contiguous).
    """
    q, k, v = (x.clone().requires_grad_() for x in full_seq)
    ref = reference(q, k, v)
    gen = torch.Generator().manual_seed(seed + 1)
    weights = [_noncontiguous_like(x, gen) for x in ref]
    ref_grads = torch.autograd.grad(ref, (q, k, v), weights)
    shares = [split_sequence(x.detach(), rank, world).requires_grad_() for x in full_seq]
    out = parallel(*shares)
    local_weights = [split_sequence(w, rank, world) for w in weights]
    assert len(out) == len(ref)
    for i, (o, r) in enumerate(zip(out, ref, strict=True)):
        assert_close(f"output {i}", split_sequence(r.detach(), rank, world), o, TOL[q.dtype], TOL[q.dtype])
    grads = torch.autograd.grad(out, shares, [w.mT.contiguous().mT for w in local_weights])  # non-contiguous
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert_close(f"d{name}", split_sequence(r, rank, world), g, TOL[q.dtype], TOL[q.dtype])


def _seq_len(world: int, blocks_per_chunk: int = 2) -> int:
    return 2 * world * BLOCK_SIZE * blocks_per_chunk


def check_full_fp64(rank: int, world: int) -> None:
    """Ring full attention (GQA 4/2): o, lse, dq, dk, dv in fp64, with a gradient on lse too."""
    inputs = _inputs(1, _seq_len(world), torch.float64)
    _compare_branches(
        rank,
        world,
        inputs,
        lambda q, k, v: ssa_kernels.full_attention(q, k, v, causal=True),
        lambda q, k, v: context_parallel_full_attention(q, k, v, group=None),
        seed=11,
    )


def check_full_fp32_mha(rank: int, world: int) -> None:
    """Ring full attention in fp32 without GQA (HQ = HKV = 2), longer chunks, batch 1, a custom scale."""
    inputs = _inputs(2, _seq_len(world, 3), torch.float32, heads=2, kv_heads=2, batch=1)
    _compare_branches(
        rank,
        world,
        inputs,
        lambda q, k, v: ssa_kernels.full_attention(q, k, v, causal=True, scale=0.3),
        lambda q, k, v: context_parallel_full_attention(q, k, v, group=None, scale=0.3),
        seed=12,
    )


def _reference_sparse(block_count: int, scale: float | None = None):
    def reference(q, k, v):
        indices = ssa_kernels.select_blocks(q, k, BLOCK_SIZE, block_count, scale)
        return ssa_kernels.sparse_attention(q, k, v, indices, BLOCK_SIZE, scale)

    return reference


def _check_selection(rank: int, world: int, inputs, block_count: int) -> None:
    q, k, _ = inputs
    ref = ssa_kernels.select_blocks(q, k, BLOCK_SIZE, block_count)
    shares = [split_sequence(x, rank, world) for x in (q, k)]
    got = context_parallel_select_blocks(*shares, BLOCK_SIZE, block_count, group=None)
    assert got.dtype == torch.int32
    assert torch.equal(got, split_sequence(ref, rank, world)), "selected blocks differ from select_blocks"


def check_sparse_k3(rank: int, world: int) -> None:
    """Sparse-only ring (GQA 4/2, K = 3 of up to 4·world blocks): global selection equals `select_blocks`
    on the full sequence, outputs and gradients equal the reference (visiting chunks skipped when unused)."""
    inputs = _inputs(3, _seq_len(world), torch.float64)
    _check_selection(rank, world, inputs, 3)
    _compare_branches(
        rank,
        world,
        inputs,
        _reference_sparse(3),
        lambda q, k, v: context_parallel_sparse_attention(q, k, v, BLOCK_SIZE, 3, group=None),
        seed=13,
    )


def check_sparse_k_more_than_blocks(rank: int, world: int) -> None:
    """Sparse-only ring with K = 64, more than the blocks that exist (every past block is selected)."""
    inputs = _inputs(4, _seq_len(world), torch.float64)
    _check_selection(rank, world, inputs, 64)
    _compare_branches(
        rank,
        world,
        inputs,
        _reference_sparse(64),
        lambda q, k, v: context_parallel_sparse_attention(q, k, v, BLOCK_SIZE, 64, group=None),
        seed=14,
    )


def check_sparse_k1_own_block(rank: int, world: int) -> None:
    """Sparse-only ring with K = 1 (own block only): every visiting chunk is skipped, results still exact."""
    inputs = _inputs(5, _seq_len(world), torch.float64)
    _compare_branches(
        rank,
        world,
        inputs,
        _reference_sparse(1),
        lambda q, k, v: context_parallel_sparse_attention(q, k, v, BLOCK_SIZE, 1, group=None),
        seed=15,
    )


def _reference_ssa(block_count: int):
    def reference(q, k, v):
        return (*ssa_kernels.full_attention(q, k, v, causal=True), *_reference_sparse(block_count)(q, k, v))

    return reference


def _parallel_ssa(block_count: int, comm: str = "ring"):
    def parallel(q, k, v):
        (o_full, lse_full), (o_sparse, lse_sparse) = context_parallel_ssa_attention(
            q, k, v, BLOCK_SIZE, block_count, group=None, comm=comm
        )
        return o_full, lse_full, o_sparse, lse_sparse

    return parallel


def check_ssa_fp64(rank: int, world: int) -> None:
    """Both branches in one ring (GQA 4/2, K = 3): both outputs, lses and the summed gradients, fp64."""
    _compare_branches(
        rank, world, _inputs(6, _seq_len(world), torch.float64), _reference_ssa(3), _parallel_ssa(3), 16
    )


def check_ssa_fp32_k_more_than_blocks(rank: int, world: int) -> None:
    """Both branches in one ring in fp32 with K = 40 (more than exist), 3 blocks per chunk."""
    _compare_branches(
        rank, world, _inputs(7, _seq_len(world, 3), torch.float32), _reference_ssa(40), _parallel_ssa(40), 17
    )


def check_ssa_one_branch_used(rank: int, world: int) -> None:
    """Only the sparse output enters the loss (full branch gets no gradient): gradients still exact."""
    q, k, v = (x.requires_grad_() for x in _inputs(8, _seq_len(world), torch.float64))
    ref_o = _reference_sparse(3)(q, k, v)[0]
    ref_grads = torch.autograd.grad(ref_o.square().sum(), (q, k, v))
    shares = [split_sequence(x.detach(), rank, world).requires_grad_() for x in (q, k, v)]
    (_, _), (o_sparse, _) = context_parallel_ssa_attention(*shares, BLOCK_SIZE, 3, group=None)
    grads = torch.autograd.grad(o_sparse.square().sum(), shares)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert_close(f"d{name}", split_sequence(r, rank, world), g, 1e-10, 1e-10)


# The all-gather path (`comm="allgather"`): every branch, K below / above the blocks that exist, GQA and MHA,
# fp64 and fp32, a gradient on lse too; selection is shared with the ring (checked above).


def check_allgather_full_fp64(rank: int, world: int) -> None:
    """All-gathered full attention (GQA 4/2) in fp64: o, lse, dq, dk, dv (reduce-scattered)."""
    _compare_branches(
        rank,
        world,
        _inputs(21, _seq_len(world), torch.float64),
        lambda q, k, v: ssa_kernels.full_attention(q, k, v, causal=True),
        lambda q, k, v: context_parallel_full_attention(q, k, v, group=None, comm="allgather"),
        seed=31,
    )


def check_allgather_sparse_k3_fp64(rank: int, world: int) -> None:
    """All-gathered sparse attention, one kernel call per local chunk at its global positions (K = 3)."""
    _compare_branches(
        rank,
        world,
        _inputs(22, _seq_len(world), torch.float64),
        _reference_sparse(3),
        lambda q, k, v: context_parallel_sparse_attention(
            q, k, v, BLOCK_SIZE, 3, group=None, comm="allgather"
        ),
        seed=32,
    )


def check_allgather_ssa_fp64(rank: int, world: int) -> None:
    """Both branches from one all-gather (GQA 4/2, K = 3), fp64."""
    _compare_branches(
        rank,
        world,
        _inputs(23, _seq_len(world), torch.float64),
        _reference_ssa(3),
        _parallel_ssa(3, "allgather"),
        33,
    )


def check_allgather_ssa_fp32_mha_k_more_than_blocks(rank: int, world: int) -> None:
    """Both branches from one all-gather in fp32 without GQA (HQ = HKV = 2), K = 40, 3 blocks per chunk."""
    inputs = _inputs(24, _seq_len(world, 3), torch.float32, heads=2, kv_heads=2, batch=1)
    _compare_branches(rank, world, inputs, _reference_ssa(40), _parallel_ssa(40, "allgather"), 34)


def check_bad_comm(rank: int, world: int) -> None:
    """An unknown `comm`: a ValueError naming the choices, before any communication."""
    q, k, v = (split_sequence(x, rank, world) for x in _inputs(1, _seq_len(world), torch.float64))
    try:
        context_parallel_ssa_attention(q, k, v, BLOCK_SIZE, 3, group=None, comm="alltoall")
    except ValueError as error:
        assert "ring" in str(error) and "allgather" in str(error) and "alltoall" in str(error), str(error)
    else:
        raise AssertionError("no ValueError for comm='alltoall'")


def check_all_gather_grad(rank: int, world: int) -> None:
    """`all_gather` forward, and its gradient for contiguous and non-contiguous incoming gradients:
    rank p gets the sum over ranks of their gradient slices for its part."""
    for dim in (0, 1, -1):
        x = (torch.arange(2 * 3 * 5, dtype=torch.float64).view(2, 3, 5) + 100 * rank).requires_grad_()
        y = all_gather(x, dim, group=None)
        expected = torch.cat(
            [torch.arange(30, dtype=torch.float64).view(2, 3, 5) + 100 * p for p in range(world)], dim
        )
        assert torch.equal(y.detach(), expected), f"dim {dim}: gathered values wrong"
        for contiguous in (True, False):
            grads = []  # the incoming gradient of every rank, drawn identically everywhere
            for p in range(world):
                gen = torch.Generator().manual_seed(100 + p)
                g = _noncontiguous_like(y, gen)
                grads.append(g.contiguous() if contiguous else g)
            assert grads[rank].is_contiguous() == contiguous
            (dx,) = torch.autograd.grad(y, x, grads[rank], retain_graph=True)
            want = sum(g.chunk(world, dim=dim)[rank] for g in grads)
            assert_close(f"all_gather dim {dim} contiguous={contiguous}", want, dx, 1e-12, 1e-12)


def check_gather_sequence(rank: int, world: int) -> None:
    """`gather_sequence` inverts `split_sequence` (tokens and activations), with the all-gather's gradient;
    `global_positions` are the positions of the share (what RoPE needs)."""
    seq_len = _seq_len(world)
    full = torch.randn(2, seq_len, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    share = split_sequence(full, rank, world).requires_grad_()
    gathered = gather_sequence(share, group=None, dim=1)
    assert torch.equal(gathered.detach(), full)
    gen = torch.Generator().manual_seed(10)  # the same incoming gradient on every rank
    g = _noncontiguous_like(gathered, gen)
    (d_share,) = torch.autograd.grad(gathered, share, g)
    assert_close("gather_sequence grad", world * split_sequence(g, rank, world), d_share, 1e-12, 1e-12)
    positions = global_positions(seq_len, rank, world)
    assert torch.equal(full[:, positions], split_sequence(full, rank, world))
    chunk = seq_len // (2 * world)
    assert positions[0] == rank * chunk and positions[-1] == (2 * world - rank) * chunk - 1


def check_bad_length(rank: int, world: int) -> None:
    """A sequence that is not a multiple of 2·cp·block_size: a ValueError naming the numbers, on every entry,
    before any communication (so no rank hangs)."""
    seq_len = 2 * world * BLOCK_SIZE + 2 * world  # splits evenly, but chunks are not whole blocks
    q, k, v = (split_sequence(x, rank, world) for x in _inputs(1, seq_len, torch.float64))
    unit = 2 * world * BLOCK_SIZE
    calls = [
        lambda: context_parallel_sparse_attention(q, k, v, BLOCK_SIZE, 3, group=None),
        lambda: context_parallel_ssa_attention(q, k, v, BLOCK_SIZE, 3, group=None),
        lambda: context_parallel_select_blocks(q, k, BLOCK_SIZE, 3, group=None),
    ]
    for call in calls:
        try:
            call()
        except ValueError as error:
            message = str(error)
            assert str(unit) in message and str(seq_len) in message and str(world) in message, message
        else:
            raise AssertionError("no ValueError for a sequence that is not a multiple of 2*cp*block_size")
    odd = torch.zeros(1, 2 * world + 1, 2, 8, dtype=torch.float64)  # the full attention needs 2·cp chunks
    try:
        context_parallel_full_attention(odd, odd[:, :, :1], odd[:, :, :1], group=None)
    except ValueError as error:
        assert str(2 * world) in str(error), str(error)
    else:
        raise AssertionError("no ValueError for a share that does not come from 2*cp chunks")


CHECKS: dict[str, Callable[[int, int], None]] = {
    name.removeprefix("check_"): fn for name, fn in globals().items() if name.startswith("check_")
}


def worker(
    rank: int, world: int, init_file: str, out_dir: str, checks: list[str] | None = None, abort: str = ""
) -> None:
    """One rank: join the gloo group, run the checks (all by default; failures recorded), write the results,
    then leave cleanly (barrier + destroy) so that a rank never exits while another still talks to it.

    `abort` (tests of the launcher only): `"after"` makes rank 0 abort at the very end, as gloo rarely does at
    interpreter exit; `"before"` makes it abort before writing its results (a real failure).
    """
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    results = {}
    for name in CHECKS if checks is None else checks:
        try:
            CHECKS[name](rank, world)
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
    if abort == "before" and rank == 0:
        os.abort()
    path = Path(out_dir) / f"rank{rank}.json"
    path.with_suffix(".tmp").write_text(json.dumps({"done": True, "results": results}))
    path.with_suffix(".tmp").rename(path)  # atomic: a present file is a complete one
    dist.barrier()
    dist.destroy_process_group()
    if abort == "after" and rank == 0:
        os.abort()
