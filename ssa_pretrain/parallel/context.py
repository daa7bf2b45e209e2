"""Context-parallel SSA attention: full and block-sparse attention of a rank's share against the sequence.

Every rank holds the load-balanced share (`layout.py`) of one sequence: queries `q [B, 2C, HQ, D]` and
keys/values `k, v [B, 2C, HKV, D]`, global chunks `r` and `2P − 1 − r` of `2P` (`P` ranks, chunk `C` tokens).
Two ways to bring the other ranks' keys (`comm`, the config's `parallel.cp_comm`):

**ring** (default): rank `r`'s key/value share travels around the group (`collectives.Ring`); at step `i`
rank `r` holds the share of rank `s = r − i (mod P)` and computes, per branch, the partial attention of its
queries to it:

* `s == r` (step 0): all local queries to all local keys, **causal** in local order (= global order);
* `s < r`: chunk `s` is before both local chunks and chunk `2P−1−s` after both: all local queries to the
  first half of the visiting share, **no mask** (the second half is skipped);
* `s > r`: both visiting chunks lie after local chunk `r` and before chunk `2P−1−r`: the second half of the
  local queries to the whole visiting share, **no mask** (the first half is skipped).

Each step is `C × 2C` query-key pairs, the same on every rank. Partials are combined with
`ssa_kernels.merge` by log-sum-exp. The next share's transfer is started before the current step computes.

**allgather**: the key/value shares are all-gathered once (with GQA they are small: `2 · HKV · D` values a
token), and each local chunk `c` attends to the global keys up to its end in one call per branch: the sparse
kernel over the chunk's query rows at their global positions (`q_start = c · C`) with global block ids, the
full branch as the causal own-chunk piece plus the unmasked piece of all earlier keys. One all-gather serves
both branches; the backward returns dK/dV by one reduce-scatter.

Sparse attention selects blocks globally (`context_parallel_select_blocks`: all-gathered block-key means,
global block ids). On the ring a step attends to the selected blocks that lie in the visiting share
(renumbered into the share), and is skipped when no local query selected any of them. Selection is not
differentiated.

Backward (both ways): no partial forward is recomputed. Each piece's `dQ, dK, dV` come from the **merged**
output and log-sum-exp of its query rows (`p = exp(s − lse)`, `delta = rowsum(dO ∘ O) − dlse`:
`full_attention_backward` / `sparse_attention_backward`), which is that piece's exact share of the gradient.
On the ring the key/value shares travel again, with their gradient accumulators `dK, dV`, which reach their
owner after one more shift; the accumulators' transfer overlaps the next step's compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import ssa_kernels
import torch
import torch.distributed as dist
from ssa_kernels import select_blocks_from_means
from ssa_kernels.full_attention import full_attention_backward, full_attention_forward
from ssa_kernels.select_blocks.naive import block_means
from ssa_kernels.sparse_attention import sparse_attention_backward
from ssa_kernels.utils import accumulation_dtype, check_positive, check_qkv

from .collectives import Comm, as_comm
from .layout import check_cp_seq_len, chunk_ids, split_sequence, unsplit_sequence

CpComm = Literal["ring", "allgather"]
CP_COMM: tuple[CpComm, ...] = ("ring", "allgather")
Group = dist.ProcessGroup | Comm | None  # a process group (None: the default one), or a `Comm`

# ---------------------------------------------------------------------------------------------- checks


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, cp_size: int, block_size: int = 1
) -> None:
    """Raise ValueError unless q `[B, 2C, HQ, D]`, k/v `[B, 2C, HKV, D]` are a valid local share."""
    check_qkv(q, k, v, same_length=True)
    check_cp_seq_len(q.shape[1] * cp_size, cp_size, block_size)


def _check_comm(comm: str) -> None:
    if comm not in CP_COMM:
        raise ValueError(f"cp_comm must be one of {', '.join(CP_COMM)}; got {comm!r}")


# ------------------------------------------------------------------------------------------- selection


@torch.no_grad()
def context_parallel_select_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    block_count: int,
    group: Group,
    scale: float | None = None,
) -> torch.Tensor:
    """`ssa_kernels.select_blocks` for this rank's queries against the global sequence (no gradient).

    The block-key means of every rank are all-gathered (`[B, T / BS, HKV, D]`, small); each half of the local
    queries is selected against them at its global positions (`ssa_kernels.select_blocks_from_means`: the
    Triton kernel on CUDA), so the result is the rows of the single-process `select_blocks` on the full
    sequence that belong to this rank.

    Args:
        q: `[B, 2C, HQ, D]` local queries; k: `[B, 2C, HKV, D]` local keys (load-balanced layout).
        block_size: `BS`; `C` must be a multiple of it.
        block_count: `K`, blocks per token including its own.
        group: the context-parallel group (None: the default group).
        scale: logit scale, default `1 / sqrt(D)`.

    Returns:
        indices: `[B, 2C, HKV, K]` int32 **global** block ids, `-1` = unused.
    """
    comm = as_comm(group)
    _check_inputs(q, k, None, comm.size, block_size)
    check_positive(block_count=block_count)
    selection = (block_size, block_count, q.shape[-1] ** -0.5 if scale is None else scale)
    chunk = q.shape[1] // 2
    local_means = block_means(k.to(accumulation_dtype(k)), block_size)  # [B, 2C / BS, HKV, D]
    kbar = unsplit_sequence(comm.all_gather(local_means, "means").unbind(0), dim=1)  # [B, T / BS, HKV, D]
    halves = [
        select_blocks_from_means(q[:, half * chunk : (half + 1) * chunk], kbar, chunk_id * chunk, *selection)
        for half, chunk_id in enumerate(chunk_ids(comm.rank, comm.size))
    ]
    return torch.cat(halves, dim=1)


# ------------------------------------------------------------------------------------------- pieces


@dataclass(frozen=True)
class _Piece:
    """One partial attention: local query rows to rows of a key/value buffer (a visiting share, or the
    gathered sequence), with its block ids for the sparse branch."""

    q_rows: slice
    kv_rows: slice
    q_start: int  # position of the first query row among the piece's keys: 0 = the same positions (causal)
    indices: torch.Tensor | None = None  # [B, R, HKV, K] block ids within kv_rows (sparse), -1 = unused


def _forward(branch: str, piece: _Piece, q, k, v, block_size: int, scale: float):
    """The piece's partial `(o [B, R, HQ, D], lse [B, R, HQ])` from its rows of q, k, v (no graph)."""
    if branch == "full":
        return full_attention_forward(q, k, v, causal=piece.q_start == 0, scale=scale)
    with torch.no_grad():
        return ssa_kernels.sparse_attention(q, k, v, piece.indices, block_size, scale, q_start=piece.q_start)


def _backward(branch: str, piece: _Piece, q, k, v, o, lse, do, dlse, block_size: int, scale: float):
    """The piece's share `(dq, dk, dv)` of the gradient, from the merged o, lse of its query rows."""
    if branch == "full":
        return full_attention_backward(q, k, v, o, lse, do, dlse, causal=piece.q_start == 0, scale=scale)
    return sparse_attention_backward(
        q, k, v, piece.indices, o, lse, do, dlse, block_size, scale, q_start=piece.q_start
    )


def _ring_piece(
    rank: int, source: int, size: int, chunk: int, branch: str, indices: torch.Tensor | None, block_size: int
) -> _Piece | None:
    """The piece of the ring step that holds `source`'s share (module docstring); None: the sparse branch
    skips it (no local query selected a block of these keys)."""
    if source == rank:
        q_rows, kv_rows, q_start = slice(0, 2 * chunk), slice(0, 2 * chunk), 0
    elif source < rank:
        q_rows, kv_rows, q_start = slice(0, 2 * chunk), slice(0, chunk), chunk
    else:
        q_rows, kv_rows, q_start = slice(chunk, 2 * chunk), slice(0, 2 * chunk), 2 * chunk
    if branch == "full":
        return _Piece(q_rows, kv_rows, q_start)
    assert indices is not None
    local = _share_indices(indices[:, q_rows], source, size, chunk, kv_rows, block_size)
    if source != rank and not bool((local >= 0).any()):
        return None
    return _Piece(q_rows, kv_rows, q_start, local)


def _share_indices(
    rows: torch.Tensor, source: int, size: int, chunk: int, kv_rows: slice, block_size: int
) -> torch.Tensor:
    """Global block ids -> block ids within the `kv_rows` of `source`'s share (`-1` elsewhere).

    Args:
        rows: `[B, R, HKV, K]` global block ids of the piece's query rows.

    Returns:
        `[B, R, HKV, K]` int64, ids in `[0, len(kv_rows) / BS)` or `-1`.
    """
    rows = rows.long()
    blocks_per_chunk = chunk // block_size
    first, second = chunk_ids(source, size)
    chunk_of, within = rows.div(blocks_per_chunk, rounding_mode="floor"), rows % blocks_per_chunk
    local = torch.where(chunk_of == first, within, within + blocks_per_chunk)  # block in the share
    local = local - kv_rows.start // block_size
    num_blocks = (kv_rows.stop - kv_rows.start) // block_size
    keep = (rows >= 0) & ((chunk_of == first) | (chunk_of == second)) & (local >= 0) & (local < num_blocks)
    return torch.where(keep, local, -1)


def _gather_pieces(rank: int, size: int, chunk: int, branch: str, indices) -> list[_Piece]:
    """The pieces of the all-gather path: each local chunk against the gathered keys up to its end."""
    pieces = []
    for half, chunk_id in enumerate(chunk_ids(rank, size)):
        q_rows, start = slice(half * chunk, (half + 1) * chunk), chunk_id * chunk
        if branch == "sparse":  # one call: the chunk's rows at their global positions, global block ids
            pieces.append(_Piece(q_rows, slice(0, start + chunk), start, indices[:, q_rows]))
            continue
        pieces.append(_Piece(q_rows, slice(start, start + chunk), 0))  # causal, its own chunk
        if start:
            pieces.append(_Piece(q_rows, slice(0, start), start))  # every earlier key, no mask
    return pieces


# ------------------------------------------------------------------------------------------- autograd


def _row_grads(grads, saved, branches) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Per branch that gets a gradient: dO `[B, 2C, HQ, D]` (zeros when only lse has one) and dlse or None."""
    active = {}
    for i, branch in enumerate(branches):
        do, dlse = grads[2 * i], grads[2 * i + 1]
        if do is None and dlse is None:
            continue
        o = saved[2 * i]
        active[branch] = (torch.zeros_like(o) if do is None else do.to(o.dtype), dlse)
    return active


class _Merged:
    """One branch's merged `(o, lse)` of the local query rows, built piece by piece: the first piece of a
    local chunk is stored as it is, later ones are merged by log-sum-exp (no merge with an empty start)."""

    def __init__(self, q: torch.Tensor, acc: torch.dtype):
        self.chunk = q.shape[1] // 2
        self.o = torch.empty(q.shape, dtype=acc, device=q.device)  # [B, 2C, HQ, D]
        self.lse = torch.empty(q.shape[:3], dtype=acc, device=q.device)  # [B, 2C, HQ]
        self.seen = [False, False]  # per local chunk

    def add(self, rows: slice, o_i: torch.Tensor, lse_i: torch.Tensor) -> None:
        halves = range(rows.start // self.chunk, rows.stop // self.chunk)
        if not any(self.seen[h] for h in halves):
            self.o[:, rows], self.lse[:, rows] = o_i, lse_i
        else:
            assert all(self.seen[h] for h in halves), "a piece spans a seen and an unseen local chunk"
            self.o[:, rows], self.lse[:, rows] = ssa_kernels.merge(
                self.o[:, rows], self.lse[:, rows], o_i, lse_i
            )
        for h in halves:
            self.seen[h] = True

    def result(self, dtype: torch.dtype) -> list[torch.Tensor]:
        assert all(self.seen), "a local chunk got no piece"
        return [self.o.to(dtype), self.lse]


class _ContextParallelAttention(torch.autograd.Function):
    """Context-parallel attention of the enabled branches over `comm` (`"ring"` or `"allgather"`); outputs
    `(o, lse)` per branch, in the order full, sparse."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        indices: torch.Tensor | None,
        branches: tuple[str, ...],
        block_size: int,
        scale: float,
        comm: Comm,
        how: CpComm,
    ) -> tuple[torch.Tensor, ...]:
        """q `[B, 2C, HQ, D]`, k/v `[B, 2C, HKV, D]`, indices `[B, 2C, HKV, K]` global (sparse) ->
        per branch o `[B, 2C, HQ, D]` (q.dtype), lse `[B, 2C, HQ]` fp32 (fp64 for fp64 inputs)."""
        chunk, acc = q.shape[1] // 2, accumulation_dtype(q)
        merged = {b: _Merged(q, acc) for b in branches}
        kv = torch.stack([k, v])  # [2, B, 2C, HKV, D]: one transfer
        if how == "allgather":
            kv = unsplit_sequence(comm.all_gather(kv, "kv").unbind(0), dim=2)  # [2, B, T, HKV, D]
            for branch in branches:
                for piece in _gather_pieces(comm.rank, comm.size, chunk, branch, indices):
                    kr, vr = kv[0, :, piece.kv_rows], kv[1, :, piece.kv_rows]
                    o_i, lse_i = _forward(branch, piece, q[:, piece.q_rows], kr, vr, block_size, scale)
                    merged[branch].add(piece.q_rows, o_i, lse_i)
            saved_kv = kv  # the gathered keys: the backward reuses them (small with GQA)
        else:
            for step in range(comm.size):
                if step + 1 < comm.size:
                    next_kv, handle = comm.shift(kv, "kv", step)  # overlaps this step's compute
                source = (comm.rank - step) % comm.size
                for branch in branches:
                    piece = _ring_piece(comm.rank, source, comm.size, chunk, branch, indices, block_size)
                    if piece is None:
                        continue
                    kr, vr = kv[0, :, piece.kv_rows], kv[1, :, piece.kv_rows]
                    o_i, lse_i = _forward(branch, piece, q[:, piece.q_rows], kr, vr, block_size, scale)
                    merged[branch].add(piece.q_rows, o_i, lse_i)
                if step + 1 < comm.size:
                    comm.wait(handle)
                    kv = next_kv
            saved_kv = torch.stack([k, v])
        results = [t for branch in branches for t in merged[branch].result(q.dtype)]
        ctx.branches, ctx.block_size, ctx.scale, ctx.comm, ctx.how = branches, block_size, scale, comm, how
        ctx.has_indices = indices is not None
        ctx.save_for_backward(q, saved_kv, *([indices] if indices is not None else []), *results)
        ctx.set_materialize_grads(False)
        return tuple(results)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        """Per branch dO `[B, 2C, HQ, D]`, dlse `[B, 2C, HQ]` (either may be None) -> dq, dk, dv."""
        q, kv, *rest = ctx.saved_tensors
        indices = rest.pop(0) if ctx.has_indices else None
        comm, chunk, acc = ctx.comm, q.shape[1] // 2, accumulation_dtype(q)
        active = _row_grads(grads, rest, ctx.branches)
        nothing = (None,) * 9
        if not active:
            return nothing
        saved = {b: (rest[2 * i], rest[2 * i + 1]) for i, b in enumerate(ctx.branches)}
        dq = torch.zeros_like(q, dtype=acc)  # [B, 2C, HQ, D]

        def add(branch: str, piece: _Piece, kv_now: torch.Tensor, dkv: torch.Tensor) -> None:
            """The piece's gradient: dq into `dq`, dk/dv into `dkv` (the accumulator of `kv_now`)."""
            rows, keys = piece.q_rows, piece.kv_rows
            (o, lse), (do, dlse) = saved[branch], active[branch]
            dq_i, dk_i, dv_i = _backward(
                branch, piece, q[:, rows], kv_now[0, :, keys], kv_now[1, :, keys], o[:, rows], lse[:, rows],
                do[:, rows], None if dlse is None else dlse[:, rows], ctx.block_size, ctx.scale,
            )  # fmt: skip
            dq[:, rows] += dq_i.to(acc)
            dkv[0, :, keys] += dk_i.to(acc)
            dkv[1, :, keys] += dv_i.to(acc)

        if ctx.how == "allgather":
            dkv = torch.zeros_like(kv, dtype=acc)  # [2, B, T, HKV, D], global order
            for branch in active:
                for piece in _gather_pieces(comm.rank, comm.size, chunk, branch, indices):
                    add(branch, piece, kv, dkv)
            shares = torch.stack([split_sequence(dkv, p, comm.size, dim=2) for p in range(comm.size)])
            dkv = comm.reduce_scatter(shares)  # [2, B, 2C, HKV, D]: every rank's gradient of this share
        else:
            dkv = torch.zeros_like(kv, dtype=acc)  # the accumulator of the share held at this step
            dkv_handle = None
            for step in range(comm.size):
                if step + 1 < comm.size:
                    next_kv, kv_handle = comm.shift(kv, "kv", step)
                source = (comm.rank - step) % comm.size
                contribution = torch.zeros_like(dkv)
                for branch in active:
                    piece = _ring_piece(comm.rank, source, comm.size, chunk, branch, indices, ctx.block_size)
                    if piece is not None:
                        add(branch, piece, kv, contribution)
                if dkv_handle is not None:  # the accumulator of this share, sent by the previous rank
                    comm.wait(dkv_handle)
                dkv = dkv + contribution
                if comm.size > 1:  # pass it on; after the last step the next rank is its owner
                    dkv, dkv_handle = comm.shift(dkv, "dkv", step)
                if step + 1 < comm.size:
                    comm.wait(kv_handle)
                    kv = next_kv
            if dkv_handle is not None:
                comm.wait(dkv_handle)
        return dq.to(q.dtype), dkv[0].to(q.dtype), dkv[1].to(q.dtype), *nothing[3:]


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor | None,
    branches: tuple[str, ...],
    block_size: int,
    scale: float | None,
    comm: Comm,
    how: CpComm,
) -> tuple[torch.Tensor, ...]:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _ContextParallelAttention.apply(q, k, v, indices, branches, block_size, scale, comm, how)


# --------------------------------------------------------------------------------------- public entries


def context_parallel_full_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: Group,
    scale: float | None = None,
    comm: CpComm = "ring",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal full attention of this rank's share against the whole sequence, over `group`.

    Equals the rows of `ssa_kernels.full_attention(Q, K, V, causal=True)` on the full sequence that belong to
    this rank (outputs and gradients). Differentiable w.r.t. q, k, v (the gradients of k and v include the
    contributions of every rank's queries).

    Args:
        q: `[B, 2C, HQ, D]`; k, v: `[B, 2C, HKV, D]` — this rank's share in the load-balanced layout
            (`split_sequence`), `HQ % HKV == 0`.
        group: the context-parallel group (None: the default group), or a `collectives.Comm`. A group of one
            (or no torch.distributed) calls the `ssa_kernels` op directly, with no length rule.
        scale: logit scale, default `1 / sqrt(D)`.
        comm: `"ring"` or `"allgather"` (module docstring).

    Returns:
        o: `[B, 2C, HQ, D]` in `q.dtype`; lse: `[B, 2C, HQ]` fp32 (fp64 for fp64 inputs).
    """
    _check_comm(comm)
    channel = as_comm(group)
    if channel.size == 1:  # no context parallelism: the op itself (any sequence length)
        return ssa_kernels.full_attention(q, k, v, causal=True, scale=scale)
    _check_inputs(q, k, v, channel.size)
    o, lse = _attention(q, k, v, None, ("full",), 1, scale, channel, comm)
    return o, lse


def context_parallel_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    block_count: int,
    group: Group,
    scale: float | None = None,
    indices: torch.Tensor | None = None,
    comm: CpComm = "ring",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSA sparse attention of this rank's share against the whole sequence (sparse-only: training in the
    `sparse` mode without alignment, the `sparse` baseline, sparse inference).

    Selects blocks globally (`context_parallel_select_blocks`, unless `indices` are given), then attends: on
    the ring, skipping the compute on visiting chunks that no local query selected (the transfer still
    happens); with `"allgather"`, in one kernel call per local chunk. Equals the rows of
    `ssa_kernels.sparse_attention(Q, K, V, select_blocks(Q, K, BS, K), BS)` on the full sequence that belong
    to this rank. Differentiable w.r.t. q, k, v; the selection is not.

    Args:
        q: `[B, 2C, HQ, D]`; k, v: `[B, 2C, HKV, D]`, this rank's share; `C` a multiple of `block_size`.
        block_size, block_count: `BS`, `K`.
        group: the context-parallel group, or a `collectives.Comm`.
        scale: logit scale, default `1 / sqrt(D)`.
        indices: `[B, 2C, HKV, K]` global block ids from `context_parallel_select_blocks` (to reuse them).
        comm: `"ring"` or `"allgather"`.

    Returns:
        o: `[B, 2C, HQ, D]` in `q.dtype`; lse: `[B, 2C, HQ]` fp32 (fp64 for fp64 inputs).
    """
    _check_comm(comm)
    channel = as_comm(group)
    if channel.size == 1:  # no context parallelism: the ops themselves (any sequence length)
        if indices is None:
            indices = ssa_kernels.select_blocks(q, k, block_size, block_count, scale)
        return ssa_kernels.sparse_attention(q, k, v, indices, block_size, scale)
    _check_inputs(q, k, v, channel.size, block_size)
    if indices is None:
        indices = context_parallel_select_blocks(q, k, block_size, block_count, channel, scale)
    o, lse = _attention(q, k, v, indices, ("sparse",), block_size, scale, channel, comm)
    return o, lse


def context_parallel_ssa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    block_count: int,
    group: Group,
    scale: float | None = None,
    comm: CpComm = "ring",
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Both SSA branches in one pass (SSA training: the mode's branch and its alignment counterpart).

    The keys and values travel once for both branches: on the ring each visiting chunk serves the full
    partial and the sparse partial (the sparse one skipped when no local query selected a block in it);
    with `"allgather"` one gather serves both. The backward is one pass as well.

    Args:
        q: `[B, 2C, HQ, D]`; k, v: `[B, 2C, HKV, D]`, this rank's share; `C` a multiple of `block_size`.
        block_size, block_count: `BS`, `K`.
        group: the context-parallel group, or a `collectives.Comm`.
        scale: logit scale, default `1 / sqrt(D)`.
        comm: `"ring"` or `"allgather"`.

    Returns:
        `(o_full, lse_full), (o_sparse, lse_sparse)`: o `[B, 2C, HQ, D]` in `q.dtype`, lse `[B, 2C, HQ]`,
        each equal to `context_parallel_full_attention` / `context_parallel_sparse_attention`.
    """
    _check_comm(comm)
    channel = as_comm(group)
    if channel.size == 1:  # no context parallelism: the ops themselves (any sequence length)
        full = context_parallel_full_attention(q, k, v, channel, scale)
        return full, context_parallel_sparse_attention(q, k, v, block_size, block_count, channel, scale)
    _check_inputs(q, k, v, channel.size, block_size)
    indices = context_parallel_select_blocks(q, k, block_size, block_count, channel, scale)
    o_full, lse_full, o_sparse, lse_sparse = _attention(
        q, k, v, indices, ("full", "sparse"), block_size, scale, channel, comm
    )
    return (o_full, lse_full), (o_sparse, lse_sparse)
