"""Context-parallel SSA attention: a ring of key/value chunks serving full and block-sparse attention.

Every rank holds the load-balanced share (`layout.py`) of one sequence: queries `q [B, 2C, HQ, D]` and
keys/values `k, v [B, 2C, HKV, D]`, global chunks `r` and `2P − 1 − r` of `2P` (`P` ranks, chunk `C` tokens).
Rank `r`'s key/value share travels around the group (`collectives.Ring`); at step `i` rank `r` holds the share
of rank `s = r − i (mod P)` and computes, per branch, the partial attention of its queries to it:

* `s == r` (step 0): all local queries to all local keys, **causal** in local order (= global order);
* `s < r`: chunk `s` is before both local chunks and chunk `2P−1−s` after both: all local queries to the
  first half of the visiting share, **no mask** (the second half is skipped);
* `s > r`: both visiting chunks lie after local chunk `r` and before chunk `2P−1−r`: the second half of the
  local queries to the whole visiting share, **no mask** (the first half is skipped).

Each step is `C × 2C` query-key pairs, the same on every rank. Partials are combined with
`ssa_kernels.merge` by log-sum-exp. The next share's transfer is started before the current step computes.

Sparse attention uses the same steps: block selection (`context_parallel_select_blocks`) sees the global
sequence through the all-gathered block-key means and returns *global* block ids; a step attends to the
selected blocks that lie in the visiting share (renumbered into the share), and is skipped when no local
query selected any of them. Selection is not differentiated.

Backward: a second ring. Key/value shares travel as in the forward together with their gradient
accumulators `dK, dV`; at each step a rank recomputes the step's partials with the `ssa_kernels` op
(autograd on, flash style: no per-step graph is kept from the forward), backpropagates
`w · dO` into `o_i` and `w · (<dO, o_i> − <dO, o> + dlse)` into `lse_i` (`w = exp(lse_i − lse)`: the
exact gradient of the merge), adds `dQ` locally and `dK, dV` into the travelling accumulators, which reach
their owner after one more shift. The accumulators' transfer overlaps the next step's compute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ssa_kernels
import torch
import torch.distributed as dist
from ssa_kernels import select_blocks_from_means
from ssa_kernels.select_blocks.naive import block_means
from ssa_kernels.utils import accumulation_dtype, check_positive, check_qkv

from .collectives import Ring, all_gather_nograd, group_rank_size
from .layout import check_cp_seq_len, chunk_ids, unsplit_sequence

Partial = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------------------------------- checks


def _check_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, cp_size: int, block_size: int = 1
) -> None:
    """Raise ValueError unless q `[B, 2C, HQ, D]`, k/v `[B, 2C, HKV, D]` are a valid local share."""
    check_qkv(q, k, v, same_length=True)
    check_cp_seq_len(q.shape[1] * cp_size, cp_size, block_size)


# ------------------------------------------------------------------------------------------- selection


@torch.no_grad()
def context_parallel_select_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    block_count: int,
    group: dist.ProcessGroup | None,
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
    rank, size = group_rank_size(group)
    _check_inputs(q, k, None, size, block_size)
    check_positive(block_count=block_count)
    selection = (block_size, block_count, q.shape[-1] ** -0.5 if scale is None else scale)
    chunk = q.shape[1] // 2
    local_means = block_means(k.to(accumulation_dtype(k)), block_size)  # [B, 2C / BS, HKV, D]
    kbar = unsplit_sequence(all_gather_nograd(local_means, group).unbind(0), dim=1)  # [B, T / BS, HKV, D]
    halves = [
        select_blocks_from_means(q[:, half * chunk : (half + 1) * chunk], kbar, chunk_id * chunk, *selection)
        for half, chunk_id in enumerate(chunk_ids(rank, size))
    ]
    return torch.cat(halves, dim=1)


# ------------------------------------------------------------------------------------ one ring step


@dataclass(frozen=True)
class _Piece:
    """One partial attention of a ring step: local query rows to rows of the visiting key/value share."""

    q_rows: slice
    kv_rows: slice
    causal: bool  # True: same positions on both sides (step 0); False: every key before every query


def _piece(rank: int, source: int, chunk: int) -> _Piece:
    """The query/key rows that rank `rank` pairs with the share of rank `source` (module docstring)."""
    if source == rank:
        return _Piece(slice(0, 2 * chunk), slice(0, 2 * chunk), causal=True)
    if source < rank:
        return _Piece(slice(0, 2 * chunk), slice(0, chunk), causal=False)
    return _Piece(slice(chunk, 2 * chunk), slice(0, 2 * chunk), causal=False)


def _share_indices(
    indices: torch.Tensor, rank: int, source: int, size: int, piece: _Piece, block_size: int
) -> torch.Tensor:
    """Global block ids -> block ids within the piece's key rows of `source`'s share (`-1` elsewhere).

    Args:
        indices: `[B, 2C, HKV, K]` global block ids of the local queries.

    Returns:
        `[B, R, HKV, K]` int64 for the piece's query rows, ids in `[0, kv_rows / BS)` or `-1`.
    """
    rows = indices[:, piece.q_rows].long()
    blocks_per_chunk = (indices.shape[1] // 2) // block_size
    first, second = chunk_ids(source, size)
    chunk_of, within = rows.div(blocks_per_chunk, rounding_mode="floor"), rows % blocks_per_chunk
    local = torch.where(chunk_of == first, within, within + blocks_per_chunk)  # block in the share
    local = local - piece.kv_rows.start // block_size
    num_blocks = (piece.kv_rows.stop - piece.kv_rows.start) // block_size
    keep = (rows >= 0) & ((chunk_of == first) | (chunk_of == second)) & (local >= 0) & (local < num_blocks)
    return torch.where(keep, local, -1)


def _past_sparse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, block_size: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse attention of queries to selected blocks of keys that all lie before them (no causal mask).

    `ssa_kernels.sparse_attention` is causal on equal-length inputs; placing the `TK` keys before the `TQ`
    queries in one sequence of `TK + TQ` (zero padding elsewhere, never selected) makes every key visible.

    Args:
        q: `[B, TQ, HQ, D]`; k, v: `[B, TK, HKV, D]`, `TK` a multiple of `block_size`.
        indices: `[B, TQ, HKV, K]` block ids within `k`, `-1` = unused.

    Returns:
        o `[B, TQ, HQ, D]`, lse `[B, TQ, HQ]`.
    """
    num_q, num_k = q.shape[1], k.shape[1]
    q_ext = torch.cat([q.new_zeros(q.shape[0], num_k, *q.shape[2:]), q], dim=1)  # [B, TK + TQ, HQ, D]
    k_ext = torch.cat([k, k.new_zeros(k.shape[0], num_q, *k.shape[2:])], dim=1)  # [B, TK + TQ, HKV, D]
    v_ext = torch.cat([v, v.new_zeros(v.shape[0], num_q, *v.shape[2:])], dim=1)
    idx_ext = torch.cat([indices.new_full((indices.shape[0], num_k, *indices.shape[2:]), -1), indices], dim=1)
    o, lse = ssa_kernels.sparse_attention(q_ext, k_ext, v_ext, idx_ext, block_size, scale)
    return o[:, num_k:], lse[:, num_k:]


def _partial(
    branch: str,
    piece: _Piece,
    indices: torch.Tensor | None,
    rank: int,
    source: int,
    size: int,
    block_size: int,
    scale: float,
) -> Partial | None:
    """The partial attention `(q_rows, k_rows, v_rows) -> (o, lse)` of one branch and piece; None: skip it
    (sparse: no local query selected a block of these keys)."""
    if branch == "full":
        return lambda q, k, v: ssa_kernels.full_attention(q, k, v, causal=piece.causal, scale=scale)
    assert indices is not None
    local = _share_indices(indices, rank, source, size, piece, block_size)  # [B, R, HKV, K]
    if not piece.causal and not bool((local >= 0).any()):
        return None
    if piece.causal:
        return lambda q, k, v: ssa_kernels.sparse_attention(q, k, v, local, block_size, scale)
    return lambda q, k, v: _past_sparse(q, k, v, local, block_size, scale)


def _merge_weight(lse_i: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """`exp(lse_i − lse)`, the share of a partial in the merged result; 0 where the partial saw no key."""
    finite = torch.isfinite(lse_i)
    return torch.where(finite, torch.exp(torch.where(finite, lse_i - lse, 0.0)), 0.0)


# ------------------------------------------------------------------------------------------- autograd


class _RingAttention(torch.autograd.Function):
    """Ring attention of the enabled branches; outputs `(o, lse)` per branch, in the order full, sparse."""

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
        group: dist.ProcessGroup | None,
    ) -> tuple[torch.Tensor, ...]:
        """q `[B, 2C, HQ, D]`, k/v `[B, 2C, HKV, D]`, indices `[B, 2C, HKV, K]` global (sparse) ->
        per branch o `[B, 2C, HQ, D]` (q.dtype), lse `[B, 2C, HQ]` fp32 (fp64 for fp64 inputs)."""
        ring = Ring(group)
        chunk, acc = q.shape[1] // 2, accumulation_dtype(q)
        outs = {b: q.new_zeros(q.shape, dtype=acc) for b in branches}  # [B, 2C, HQ, D]
        lses = {b: q.new_full(q.shape[:3], float("-inf"), dtype=acc) for b in branches}  # [B, 2C, HQ]
        kv = torch.stack([k, v])  # [2, B, 2C, HKV, D]: one transfer per step
        for step in range(ring.size):
            if step + 1 < ring.size:
                next_kv, handle = ring.shift(kv, tag=0)  # overlaps this step's compute
            source = ring.source(step)
            piece = _piece(ring.rank, source, chunk)
            k_rows, v_rows = kv[0, :, piece.kv_rows], kv[1, :, piece.kv_rows]
            for branch in branches:
                fn = _partial(branch, piece, indices, ring.rank, source, ring.size, block_size, scale)
                if fn is None:
                    continue
                o_i, lse_i = fn(q[:, piece.q_rows], k_rows, v_rows)
                rows = piece.q_rows
                outs[branch][:, rows], lses[branch][:, rows] = ssa_kernels.merge(
                    outs[branch][:, rows], lses[branch][:, rows], o_i, lse_i
                )
            if step + 1 < ring.size:
                ring.wait(handle)
                kv = next_kv
        results = []
        for branch in branches:
            results += [outs[branch].to(q.dtype), lses[branch].to(acc)]
        ctx.branches, ctx.block_size, ctx.scale, ctx.group = branches, block_size, scale, group
        ctx.has_indices = indices is not None
        ctx.save_for_backward(q, k, v, *([indices] if indices is not None else []), *results)
        ctx.set_materialize_grads(False)
        return tuple(results)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        """Per branch dO `[B, 2C, HQ, D]`, dlse `[B, 2C, HQ]` (either may be None) -> dq, dk, dv."""
        q, k, v, *rest = ctx.saved_tensors
        indices = rest.pop(0) if ctx.has_indices else None
        ring, chunk, acc = Ring(ctx.group), q.shape[1] // 2, accumulation_dtype(q)
        # per branch: dO and <dO, o> - dlse (the merge's row term), for the branches that get a gradient
        active: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for i, branch in enumerate(ctx.branches):
            do, dlse = grads[2 * i], grads[2 * i + 1]
            if do is None and dlse is None:
                continue
            o, lse = rest[2 * i], rest[2 * i + 1]
            do = torch.zeros_like(o, dtype=acc) if do is None else do.to(acc)  # [B, 2C, HQ, D]
            row = (do * o.to(acc)).sum(-1)  # [B, 2C, HQ]
            if dlse is not None:
                row = row - dlse.to(acc)
            active[branch] = (do, row, lse)
        if not active:
            return None, None, None, None, None, None, None, None
        dq = torch.zeros_like(q, dtype=acc)  # [B, 2C, HQ, D]
        kv = torch.stack([k, v])  # [2, B, 2C, HKV, D]
        dkv = torch.zeros_like(kv, dtype=acc)  # the accumulator of the share held at this step
        dkv_handle = None
        for step in range(ring.size):
            if step + 1 < ring.size:
                next_kv, kv_handle = ring.shift(kv, tag=0)
            source = ring.source(step)
            piece = _piece(ring.rank, source, chunk)
            rows = piece.q_rows
            contribution = torch.zeros_like(dkv)
            for branch, (do, row, lse) in active.items():
                fn = _partial(branch, piece, indices, ring.rank, source, ring.size, ctx.block_size, ctx.scale)
                if fn is None:
                    continue
                with torch.enable_grad():
                    leaves = [
                        t.detach().requires_grad_()
                        for t in (q[:, rows], kv[0, :, piece.kv_rows], kv[1, :, piece.kv_rows])
                    ]
                    o_i, lse_i = fn(*leaves)
                w = _merge_weight(lse_i.detach().to(acc), lse[:, rows].to(acc))  # [B, R, HQ]
                grad_o = (w[..., None] * do[:, rows]).to(o_i.dtype)
                grad_lse = w * ((do[:, rows] * o_i.detach().to(acc)).sum(-1) - row[:, rows])
                dq_i, dk_i, dv_i = torch.autograd.grad(
                    (o_i, lse_i), leaves, (grad_o, grad_lse.to(lse_i.dtype)), allow_unused=True
                )
                if dq_i is not None:
                    dq[:, rows] += dq_i.to(acc)
                for j, d in enumerate((dk_i, dv_i)):
                    if d is not None:
                        contribution[j, :, piece.kv_rows] += d.to(acc)
            if dkv_handle is not None:  # the accumulator of this share, sent by the previous rank
                ring.wait(dkv_handle)
            dkv = dkv + contribution
            if ring.size > 1:  # pass it on; after the last step the next rank is its owner
                dkv, dkv_handle = ring.shift(dkv, tag=1)
            if step + 1 < ring.size:
                ring.wait(kv_handle)
                kv = next_kv
        if dkv_handle is not None:
            ring.wait(dkv_handle)
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None, None


def _ring(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor | None,
    branches: tuple[str, ...],
    block_size: int,
    scale: float | None,
    group: dist.ProcessGroup | None,
) -> tuple[torch.Tensor, ...]:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _RingAttention.apply(q, k, v, indices, branches, block_size, scale, group)


# --------------------------------------------------------------------------------------- public entries


def context_parallel_full_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup | None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal full attention of this rank's share against the whole sequence, by a ring over `group`.

    Equals the rows of `ssa_kernels.full_attention(Q, K, V, causal=True)` on the full sequence that belong to
    this rank (outputs and gradients). Differentiable w.r.t. q, k, v (the gradients of k and v include the
    contributions of every rank's queries).

    Args:
        q: `[B, 2C, HQ, D]`; k, v: `[B, 2C, HKV, D]` — this rank's share in the load-balanced layout
            (`split_sequence`), `HQ % HKV == 0`.
        group: the context-parallel group (None: the default group). A group of one (or no
            torch.distributed) calls the `ssa_kernels` op directly, with no length rule.
        scale: logit scale, default `1 / sqrt(D)`.

    Returns:
        o: `[B, 2C, HQ, D]` in `q.dtype`; lse: `[B, 2C, HQ]` fp32 (fp64 for fp64 inputs).
    """
    if group_rank_size(group)[1] == 1:  # no context parallelism: the op itself (any sequence length)
        return ssa_kernels.full_attention(q, k, v, causal=True, scale=scale)
    _check_inputs(q, k, v, group_rank_size(group)[1])
    o, lse = _ring(q, k, v, None, ("full",), 1, scale, group)
    return o, lse


def context_parallel_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    block_count: int,
    group: dist.ProcessGroup | None,
    scale: float | None = None,
    indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSA sparse attention of this rank's share against the whole sequence (sparse-only: training in the
    `sparse` mode without alignment, the `sparse` baseline, sparse inference).

    Selects blocks globally (`context_parallel_select_blocks`, unless `indices` are given), then runs the
    ring, skipping the compute on visiting chunks that no local query selected (the transfer still happens).
    Equals the rows of `ssa_kernels.sparse_attention(Q, K, V, select_blocks(Q, K, BS, K), BS)` on the full
    sequence that belong to this rank. Differentiable w.r.t. q, k, v; the selection is not.

    Args:
        q: `[B, 2C, HQ, D]`; k, v: `[B, 2C, HKV, D]`, this rank's share; `C` a multiple of `block_size`.
        block_size, block_count: `BS`, `K`.
        group: the context-parallel group.
        scale: logit scale, default `1 / sqrt(D)`.
        indices: `[B, 2C, HKV, K]` global block ids from `context_parallel_select_blocks` (to reuse them).

    Returns:
        o: `[B, 2C, HQ, D]` in `q.dtype`; lse: `[B, 2C, HQ]` fp32 (fp64 for fp64 inputs).
    """
    if group_rank_size(group)[1] == 1:  # no context parallelism: the ops themselves (any sequence length)
        if indices is None:
            indices = ssa_kernels.select_blocks(q, k, block_size, block_count, scale)
        return ssa_kernels.sparse_attention(q, k, v, indices, block_size, scale)
    _check_inputs(q, k, v, group_rank_size(group)[1], block_size)
    if indices is None:
        indices = context_parallel_select_blocks(q, k, block_size, block_count, group, scale)
    o, lse = _ring(q, k, v, indices, ("sparse",), block_size, scale, group)
    return o, lse


def context_parallel_ssa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    block_count: int,
    group: dist.ProcessGroup | None,
    scale: float | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Both SSA branches in one ring pass (SSA training: the mode's branch and its alignment counterpart).

    Each visiting key/value chunk is transferred once and serves the full partial and the sparse partial
    (the sparse one skipped when no local query selected a block in it); the backward is one ring as well.

    Args:
        q: `[B, 2C, HQ, D]`; k, v: `[B, 2C, HKV, D]`, this rank's share; `C` a multiple of `block_size`.
        block_size, block_count: `BS`, `K`.
        group: the context-parallel group.
        scale: logit scale, default `1 / sqrt(D)`.

    Returns:
        `(o_full, lse_full), (o_sparse, lse_sparse)`: o `[B, 2C, HQ, D]` in `q.dtype`, lse `[B, 2C, HQ]`,
        each equal to `context_parallel_full_attention` / `context_parallel_sparse_attention`.
    """
    if group_rank_size(group)[1] == 1:  # no context parallelism: the ops themselves (any sequence length)
        full = context_parallel_full_attention(q, k, v, group, scale)
        return full, context_parallel_sparse_attention(q, k, v, block_size, block_count, group, scale)
    _check_inputs(q, k, v, group_rank_size(group)[1], block_size)
    indices = context_parallel_select_blocks(q, k, block_size, block_count, group, scale)
    o_full, lse_full, o_sparse, lse_sparse = _ring(
        q, k, v, indices, ("full", "sparse"), block_size, scale, group
    )
    return (o_full, lse_full), (o_sparse, lse_sparse)
