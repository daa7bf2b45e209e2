"""Triton sparse attention over the blocks chosen by `select_blocks`, forward and backward, GQA-aware.

Forward and dq: one program per (token, kv head); its rows are the `G` query heads of the group (padded to 16
for the tensor cores), so each selected key/value block is loaded once per group. dk/dv: a reverse index
lists, per (key block, kv head), the tokens that selected it, in token order; each list is cut into items of
at most `dkdv_chunk` tokens, one program per item accumulates that item's share of the block's dk, dv, and a
second kernel sums the items of every block in item order. A block that every token selects (an attention
sink) thus spreads over many programs instead of serialising one; no atomics, deterministic. A dk/dv step
stacks the rows of several tokens, each token's `G` heads padded only to a power of two, so a small group
(G = 4) fills the tensor-core tile too.
"""

import torch

from ..backends import tl, triton

LOG2E = 1.4426950408889634


@triton.jit
def selected_keys(
    k,
    v,
    idx,
    n0,
    b,
    t,
    h,
    T,
    TK,
    Q0,
    HKV: tl.constexpr,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    BS: tl.constexpr,
    NS: tl.constexpr,
    BKV: tl.constexpr,
):
    """Keys and values `[BKV, D_PAD]` at positions `n0 … n0 + BKV − 1` of query row `t`'s selected blocks laid
    end to end (kv head `h`, batch `b`), and which of them the row sees (`[BKV]`: a used slot, at or before
    its position `Q0 + t`; `T` query rows, `TK` keys)."""
    n = n0 + tl.arange(0, BKV)
    blk = tl.load(idx + ((b * T + t).to(tl.int64) * HKV + h) * NS + n // BS, mask=n < NS * BS, other=-1)
    pos = blk * BS + n % BS
    ok = (blk >= 0) & (pos <= Q0 + t) & (pos < TK)
    kv_rows = ((b * TK + pos).to(tl.int64) * HKV + h) * D
    d = tl.arange(0, D_PAD)
    mask = ok[:, None] & (d < D)[None, :]
    kt = tl.load(k + kv_rows[:, None] + d[None, :], mask=mask, other=0.0)
    vt = tl.load(v + kv_rows[:, None] + d[None, :], mask=mask, other=0.0)
    return kt, vt, ok


@triton.jit
def sparse_fwd_kernel(
    q,  # [B, T, HQ, D]
    k,  # [B, TK, HKV, D]
    v,  # [B, TK, HKV, D]
    idx,  # [B, T, HKV, NS] int32
    o,  # [B, T, HQ, D]
    lse,  # [B, T, HQ] fp32
    T,
    TK,
    Q0,
    scale_log2,
    HKV: tl.constexpr,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    BS: tl.constexpr,
    NS: tl.constexpr,
    BKV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid `(T, B * HKV)`: query row `t` (position `Q0 + t` of the `TK` keys) attends to the visible keys of
    its `NS` selected blocks."""
    t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = pid_bh // HKV, pid_bh % HKV
    head = tl.arange(0, GP)
    d = tl.arange(0, D_PAD)
    row_ok = head < G
    d_ok = d < D
    bt = (b * T + t).to(tl.int64)
    q_rows = (bt * HKV * G + h * G + head) * D  # [GP]
    qt = tl.load(q + q_rows[:, None] + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m = tl.full([GP], float("-inf"), tl.float32)
    acc_l = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D_PAD], tl.float32)
    for n0 in range(0, NS * BS, BKV):
        kt, vt, ok = selected_keys(
            k, v, idx, n0, b, t, h, T, TK, Q0, HKV, D, D_PAD, BS, NS, BKV
        )  # [BKV, D_PAD] x2, [BKV]
        s = tl.dot(qt, tl.trans(kt), input_precision=PRECISION) * scale_log2  # [GP, BKV]
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m - m_safe)
        acc_l = acc_l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PRECISION)
        m = m_new
    empty = acc_l == 0.0  # no visible key: o = 0, lse = -inf
    out = acc / tl.where(empty, 1.0, acc_l)[:, None]
    tl.store(
        o + q_rows[:, None] + d[None, :], out.to(o.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :]
    )
    row_lse = tl.where(empty, float("-inf"), (m + tl.log2(tl.where(empty, 1.0, acc_l))) * 0.6931471805599453)
    tl.store(lse + bt * HKV * G + h * G + head, row_lse, mask=row_ok)


@triton.jit
def sparse_bwd_dq_kernel(
    q,  # [B, T, HQ, D]
    k,  # [B, TK, HKV, D]
    v,  # [B, TK, HKV, D]
    idx,  # [B, T, HKV, NS] int32
    o,  # [B, T, HQ, D]
    do,  # [B, T, HQ, D]
    lse,  # [B, T, HQ] fp32
    dlse,  # [B, T, HQ] fp32, or None
    delta,  # [B, T, HQ] fp32 output for the dk/dv kernel: rowsum(do * o) - dlse
    dq,  # [B, T, HQ, D]
    T,
    TK,
    Q0,
    scale,
    HKV: tl.constexpr,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    BS: tl.constexpr,
    NS: tl.constexpr,
    BKV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid `(T, B * HKV)`: `dq = scale * sum_s p (dp - delta) k_s` over the visible selected keys; writes the
    rows' `delta` for the dk/dv kernel (one pass over `o` and `do` instead of separate PyTorch ops)."""
    t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = pid_bh // HKV, pid_bh % HKV
    head = tl.arange(0, GP)
    d = tl.arange(0, D_PAD)
    row_ok = head < G
    d_ok = d < D
    bt = (b * T + t).to(tl.int64)
    q_rows = (bt * HKV * G + h * G + head) * D  # [GP]
    io_mask = row_ok[:, None] & d_ok[None, :]
    qt = tl.load(q + q_rows[:, None] + d[None, :], mask=io_mask, other=0.0)
    dot = tl.load(do + q_rows[:, None] + d[None, :], mask=io_mask, other=0.0)
    row_stats = bt * HKV * G + h * G + head  # [GP] flat (token, query head)
    lse2 = tl.load(lse + row_stats, mask=row_ok, other=0.0) * 1.4426950408889634
    ot = tl.load(o + q_rows[:, None] + d[None, :], mask=io_mask, other=0.0)
    dlt = tl.sum(dot.to(tl.float32) * ot.to(tl.float32), 1)  # [GP]
    if dlse is not None:  # d lse / d logit = p: it enters as ds = p (dp - delta + dlse)
        dlt -= tl.load(dlse + row_stats, mask=row_ok, other=0.0)
    tl.store(delta + row_stats, dlt, mask=row_ok)
    acc = tl.zeros([GP, D_PAD], tl.float32)
    for n0 in range(0, NS * BS, BKV):
        kt, vt, ok = selected_keys(
            k, v, idx, n0, b, t, h, T, TK, Q0, HKV, D, D_PAD, BS, NS, BKV
        )  # [BKV, D_PAD] x2, [BKV]
        s = tl.dot(qt, tl.trans(kt), input_precision=PRECISION) * (scale * 1.4426950408889634)
        p = tl.where(ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)  # [GP, BKV]
        dp = tl.dot(dot, tl.trans(vt), input_precision=PRECISION)
        ds = p * (dp - dlt[:, None])
        acc += tl.dot(ds.to(kt.dtype), kt, input_precision=PRECISION)
    tl.store(dq + q_rows[:, None] + d[None, :], (acc * scale).to(dq.dtype.element_ty), mask=io_mask)


@triton.jit
def sparse_bwd_dkdv_kernel(
    q,  # [B, T, HQ, D]
    k,  # [B, TK, HKV, D]
    v,  # [B, TK, HKV, D]
    do,  # [B, T, HQ, D]
    lse,  # [B, T, HQ] fp32
    delta,  # [B, T, HQ] fp32
    rev_tokens,  # [E] int32: tokens that selected each (batch, kv head, block), grouped, ascending
    rev_offsets,  # [GROUPS + 1] int32: group boundaries in rev_tokens, group = (b * HKV + h) * NBA + block
    item_group,  # [ITEMS] int32: the group of each item; GROUPS for the items past the last
    item_offsets,  # [GROUPS + 1] int32: the first item of each group
    dk_part,  # [ITEMS, BSP, D_PAD] fp32: each item's share of its block's dk (unscaled) ...
    dv_part,  # ... and dv
    T,
    TK,
    Q0,
    NBA,
    GROUPS,
    CHUNK,
    scale,
    HKV: tl.constexpr,
    G: tl.constexpr,
    GR: tl.constexpr,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    BS: tl.constexpr,
    BSP: tl.constexpr,
    BT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid `(ITEMS,)`: item `i`, tokens `[c * CHUNK, (c + 1) * CHUNK)` of its group's list, accumulates the
    group's block keys' dk, dv over those (token, head) rows."""
    i = tl.program_id(0)
    group = tl.load(item_group + i)
    real = group < GROUPS
    group = tl.minimum(group, GROUPS - 1)
    pid_bh, j = group // NBA, group % NBA
    b, h = pid_bh // HKV, pid_bh % HKV
    d = tl.arange(0, D_PAD)
    d_ok = d < D
    pos = j * BS + tl.arange(0, BSP)  # [BSP]
    key_ok = (pos < TK) & (tl.arange(0, BSP) < BS)
    kv_rows = ((b * TK + pos).to(tl.int64) * HKV + h) * D
    kv_mask = key_ok[:, None] & d_ok[None, :]
    kb = tl.load(k + kv_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
    vb = tl.load(v + kv_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
    dk_acc = tl.zeros([BSP, D_PAD], tl.float32)
    dv_acc = tl.zeros([BSP, D_PAD], tl.float32)
    rows = tl.arange(0, BT * GR)  # token-major: BT tokens x GR heads (G padded to a power of two)
    head = rows % GR
    start = tl.load(rev_offsets + group) + (i - tl.load(item_offsets + group)) * CHUNK
    end = tl.where(real, tl.minimum(tl.load(rev_offsets + group + 1), start + CHUNK), start)
    for e0 in range(start, end, BT):
        e = e0 + rows // GR  # [R] entry of each (token, head) row
        row_ok = (e < end) & (head < G)
        tok = tl.load(rev_tokens + e, mask=e < end, other=0)
        hq = ((b * T + tok).to(tl.int64) * HKV + h) * G + head  # [R] flat (token, query head)
        q_mask = row_ok[:, None] & d_ok[None, :]
        qt = tl.load(q + hq[:, None] * D + d[None, :], mask=q_mask, other=0.0)
        dot = tl.load(do + hq[:, None] * D + d[None, :], mask=q_mask, other=0.0)
        lse2 = tl.load(lse + hq, mask=row_ok, other=0.0) * 1.4426950408889634
        dlt = tl.load(delta + hq, mask=row_ok, other=0.0)
        s = tl.dot(qt, tl.trans(kb), input_precision=PRECISION) * (scale * 1.4426950408889634)  # [R, BSP]
        seen = row_ok[:, None] & key_ok[None, :] & (pos[None, :] <= Q0 + tok[:, None])
        p = tl.where(seen, tl.exp2(s - lse2[:, None]), 0.0)
        dv_acc += tl.dot(tl.trans(p.to(dot.dtype)), dot, input_precision=PRECISION)
        dp = tl.dot(dot, tl.trans(vb), input_precision=PRECISION)
        ds = p * (dp - dlt[:, None])
        dk_acc += tl.dot(tl.trans(ds.to(qt.dtype)), qt, input_precision=PRECISION)
    part = (i.to(tl.int64) * BSP + tl.arange(0, BSP))[:, None] * D_PAD + d[None, :]
    tl.store(dk_part + part, dk_acc)
    tl.store(dv_part + part, dv_acc)


@triton.jit
def sparse_bwd_dkdv_reduce_kernel(
    dk_part,  # [ITEMS, BSP, D_PAD] fp32
    dv_part,
    item_offsets,  # [GROUPS + 1] int32
    dk,  # [B, TK, HKV, D]
    dv,
    TK,
    NBA,
    scale,
    HKV: tl.constexpr,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    BS: tl.constexpr,
    BSP: tl.constexpr,
):
    """Grid `(NBA, B * HKV)`: block `j`'s dk, dv = the sum of its group's items, in item order (zero when no
    token selected it)."""
    j = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = pid_bh // HKV, pid_bh % HKV
    d = tl.arange(0, D_PAD)
    pos = j * BS + tl.arange(0, BSP)
    kv_rows = ((b * TK + pos).to(tl.int64) * HKV + h) * D
    kv_mask = ((pos < TK) & (tl.arange(0, BSP) < BS))[:, None] & (d < D)[None, :]
    dk_acc = tl.zeros([BSP, D_PAD], tl.float32)
    dv_acc = tl.zeros([BSP, D_PAD], tl.float32)
    group = pid_bh * NBA + j
    first, last = tl.load(item_offsets + group), tl.load(item_offsets + group + 1)
    part = first.to(tl.int64) * (BSP * D_PAD) + tl.arange(0, BSP)[:, None] * D_PAD + d[None, :]
    for _ in range(first, last):
        dk_acc += tl.load(dk_part + part)
        dv_acc += tl.load(dv_part + part)
        part += BSP * D_PAD
    tl.store(dk + kv_rows[:, None] + d[None, :], (dk_acc * scale).to(dk.dtype.element_ty), mask=kv_mask)
    tl.store(dv + kv_rows[:, None] + d[None, :], dv_acc.to(dv.dtype.element_ty), mask=kv_mask)


def _tiles(q: torch.Tensor, k: torch.Tensor, block_size: int) -> dict[str, int | str]:
    """Compile-time sizes shared by the three kernels for q `[B, T, HQ, D]`, k `[B, T, HKV, D]`."""
    group = q.shape[2] // k.shape[2]
    return {
        "HKV": k.shape[2],
        "G": group,
        "GP": max(16, triton.next_power_of_2(group)),  # rows of a tensor-core tile
        "D": q.shape[3],
        "D_PAD": max(16, triton.next_power_of_2(q.shape[3])),  # head dim padded for `tl.arange` / tl.dot
        "BS": block_size,
        "PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
    }


def gather_launch(slots: int, block_size: int, keys: int, warps: int, stages: int) -> dict[str, int]:
    """Launch settings of the forward and dq kernels (one program per token gathers its selected keys):
    `keys` per step (at most the row's `slots * block_size`), warps, pipeline stages."""
    steps = max(16, min(keys, triton.next_power_of_2(slots * block_size)))
    return {"BKV": steps, "num_warps": warps, "num_stages": stages}


def sparse_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    block_size: int,
    scale: float,
    *,
    q_start: int = 0,
    keys: int = 32,
    warps: int = 1,
    stages: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch `sparse_fwd_kernel`.

    Args:
        q: `[B, T, HQ, D]`, k/v: `[B, TK, HKV, D]` contiguous, one dtype.
        indices: `[B, T, HKV, NS]` int32 contiguous.
        q_start: the position of query row 0 among the keys (0 with `T == TK`: one sequence).
        keys, warps, stages: keys per step, warps and pipeline stages (`tools/bench_attention.py --tune fwd`;
            one warp and 32 keys were 1.7x faster than 4 warps and 64 keys on an H100 at D = 64: with one
            warp the rows' max and sum never cross warps).

    Returns:
        o: `[B, T, HQ, D]` in `q.dtype`; lse: `[B, T, HQ]` fp32.
    """
    batch, seq_len, num_heads, _ = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(batch, seq_len, num_heads, dtype=torch.float32, device=q.device)
    slots = indices.shape[3]
    sparse_fwd_kernel[(seq_len, batch * k.shape[2])](
        q=q,
        k=k,
        v=v,
        idx=indices,
        o=o,
        lse=lse,
        T=seq_len,
        TK=k.shape[1],
        Q0=q_start,
        scale_log2=scale * LOG2E,
        NS=slots,
        **gather_launch(slots, block_size, keys, warps, stages),
        **_tiles(q, k, block_size),
    )
    return o, lse


def reverse_index(
    indices: torch.Tensor, block_size: int, num_keys: int | None = None, q_start: int = 0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For every (batch, kv head, key block): the query rows that selected it and can see part of it.

    No host synchronisation: one stable sort of int32 group ids and a `searchsorted` for the boundaries.

    Args:
        indices: `[B, T, HKV, NS]` block indices, `-1` = unused.
        num_keys: `TK`, default `T`; q_start: the position of query row 0 among the keys.

    Returns:
        tokens: `[B * T * HKV * NS]` int32 query rows, grouped by (batch, kv head, block), ascending within a
            group; entries past `offsets[-1]` belong to no group.
        offsets: `[B * HKV * NBA + 1]` int32; group `g` is `tokens[offsets[g]:offsets[g + 1]]`.
        NBA: `ceil(TK / block_size)`, the blocks that hold keys.
    """
    batch, seq_len, num_kv_heads, slots = indices.shape
    device = indices.device
    num_blocks = triton.cdiv(seq_len if num_keys is None else num_keys, block_size)
    t = torch.arange(q_start, q_start + seq_len, device=device, dtype=torch.int32)[None, :, None, None]
    # a block starting after the row's position adds nothing; ids past the keys are none
    seen = (indices >= 0) & (indices * block_size <= t) & (indices < num_blocks)
    b = torch.arange(batch, device=device, dtype=torch.int32)[:, None, None, None]
    h = torch.arange(num_kv_heads, device=device, dtype=torch.int32)[None, None, :, None]
    groups = batch * num_kv_heads * num_blocks
    group = torch.where(seen, (b * num_kv_heads + h) * num_blocks + indices, groups)  # [B, T, HKV, NS]
    group, order = group.flatten().sort(stable=True)  # flat order is token-major: tokens stay ascending
    tokens = (order // (num_kv_heads * slots) % seq_len).to(torch.int32)
    bounds = torch.arange(groups + 1, device=device, dtype=torch.int32)
    return tokens, torch.searchsorted(group, bounds, out_int32=True), num_blocks


def split_groups(offsets: torch.Tensor, entries: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut every group of a reverse index into items of at most `chunk` entries, on the device (no host
    synchronisation: the item count is bounded from above by `ceil(entries / chunk) + groups`).

    Args:
        offsets: `[GROUPS + 1]` int32 group boundaries (`reverse_index`); entries: its token list's length.

    Returns:
        item_group: `[ITEMS]` int32, the group of each item, `GROUPS` for the items past the last real one.
        item_offsets: `[GROUPS + 1]` int32, the first item of each group (items are group-major, in order).
    """
    groups = offsets.numel() - 1
    items = (offsets[1:] - offsets[:-1] + chunk - 1) // chunk
    item_offsets = torch.zeros(groups + 1, dtype=torch.int32, device=offsets.device)
    torch.cumsum(items, 0, dtype=torch.int32, out=item_offsets[1:])
    bound = torch.arange(-(-entries // chunk) + groups, dtype=torch.int32, device=offsets.device)
    item_group = torch.searchsorted(item_offsets, bound, right=True, out_int32=True) - 1
    return item_group, item_offsets


def sparse_attention_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    block_size: int,
    scale: float,
    *,
    q_start: int = 0,
    dq_keys: int = 32,
    dq_warps: int = 1,
    dq_stages: int = 3,
    dkdv_rows: int | None = None,
    dkdv_warps: int = 4,
    dkdv_stages: int = 3,
    dkdv_chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the dq and dk/dv kernels.

    Args:
        q, o, do: `[B, T, HQ, D]`; k, v: `[B, TK, HKV, D]`; indices: `[B, T, HKV, NS]` int32.
        lse: `[B, T, HQ]` fp32 from the forward (or the merged one of a key superset); dlse: its gradient or
            None.
        q_start: the position of query row 0 among the keys (0 with `T == TK`: one sequence).
        dq_keys, dq_warps, dq_stages: keys per step, warps and pipeline stages of the dq kernel (as the
            forward's).
        dkdv_rows, dkdv_warps, dkdv_stages: (token, head) rows per dk/dv step (default 128 for head dims up
            to 64, else 64), warps and pipeline stages of the dk/dv kernel (`tools/bench_attention.py --tune`
            sweeps them: 128 rows are 9 % faster than 64 at D = 64 on H100).
        dkdv_chunk: the most tokens of one key block's reverse list that one dk/dv program takes.

    Returns:
        dq `[B, T, HQ, D]`, dk and dv `[B, TK, HKV, D]`, in the input dtype.
    """
    batch, seq_len = q.shape[:2]
    delta = torch.empty_like(lse)  # [B, T, HQ], written by the dq kernel
    tiles = _tiles(q, k, block_size)
    slots = indices.shape[3]
    dq = torch.empty_like(q)
    sparse_bwd_dq_kernel[(seq_len, batch * k.shape[2])](
        q=q,
        k=k,
        v=v,
        idx=indices,
        o=o,
        do=do,
        lse=lse,
        dlse=None if dlse is None else dlse.float().contiguous(),
        delta=delta,
        dq=dq,
        T=seq_len,
        TK=k.shape[1],
        Q0=q_start,
        scale=scale,
        NS=slots,
        **gather_launch(slots, block_size, dq_keys, dq_warps, dq_stages),
        **tiles,
    )
    tokens, offsets, num_blocks = reverse_index(indices, block_size, k.shape[1], q_start)
    item_group, item_offsets = split_groups(offsets, tokens.numel(), dkdv_chunk)
    block_rows = max(16, triton.next_power_of_2(block_size))
    token_rows = triton.next_power_of_2(tiles["G"])  # a token's query heads, side by side in the tile
    dk_part, dv_part = (
        torch.empty(item_group.numel(), block_rows, tiles["D_PAD"], device=q.device, dtype=torch.float32)
        for _ in range(2)
    )
    sparse_bwd_dkdv_kernel[(item_group.numel(),)](
        q=q,
        k=k,
        v=v,
        do=do,
        lse=lse,
        delta=delta,
        rev_tokens=tokens,
        rev_offsets=offsets,
        item_group=item_group,
        item_offsets=item_offsets,
        dk_part=dk_part,
        dv_part=dv_part,
        T=seq_len,
        TK=k.shape[1],
        Q0=q_start,
        NBA=num_blocks,
        GROUPS=offsets.numel() - 1,
        CHUNK=dkdv_chunk,
        scale=scale,
        BSP=block_rows,
        GR=token_rows,
        BT=max(1, max(16, dkdv_rows or (128 if tiles["D_PAD"] <= 64 else 64)) // token_rows),
        **{name: value for name, value in tiles.items() if name != "GP"},
        num_warps=dkdv_warps,
        num_stages=dkdv_stages,
    )
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    sparse_bwd_dkdv_reduce_kernel[(num_blocks, batch * k.shape[2])](
        dk_part=dk_part,
        dv_part=dv_part,
        item_offsets=item_offsets,
        dk=dk,
        dv=dv,
        TK=k.shape[1],
        NBA=num_blocks,
        scale=scale,
        HKV=tiles["HKV"],
        D=tiles["D"],
        D_PAD=tiles["D_PAD"],
        BS=block_size,
        BSP=block_rows,
    )
    return dq, dk, dv


class SparseAttentionFunction(torch.autograd.Function):
    """Autograd of the Triton sparse attention; gradients for `o` and `lse`, none for the indices."""

    @staticmethod
    def forward(ctx, q, k, v, indices, block_size, scale, q_start=0):  # type: ignore[override]
        """q `[B, T, HQ, D]`, k/v `[B, TK, HKV, D]`, indices `[B, T, HKV, NS]` -> o, lse."""
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        indices = indices.to(torch.int32).contiguous()
        o, lse = sparse_attention_fwd(q, k, v, indices, block_size, scale, q_start=q_start)
        ctx.save_for_backward(q, k, v, indices, o, lse)
        ctx.block_size, ctx.scale, ctx.q_start = block_size, scale, q_start
        ctx.set_materialize_grads(False)
        return o, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dlse):  # type: ignore[override]
        """do `[B, T, HQ, D]` (or None), dlse `[B, T, HQ]` (or None) -> dq, dk, dv."""
        q, k, v, indices, o, lse = ctx.saved_tensors
        do = torch.zeros_like(o) if do is None else do.contiguous()
        dq, dk, dv = sparse_attention_bwd(
            q, k, v, indices, o, lse, do, dlse, ctx.block_size, ctx.scale, q_start=ctx.q_start
        )
        return dq, dk, dv, None, None, None, None


def parallel_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    indices: torch.Tensor,
    block_size: int,
    scale: float | None = None,
    q_start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of `naive_sparse_attention` (same arguments and results; inputs checked by the caller).

    Args:
        q: `[B, T, HQ, D]` fp16/bf16/fp32; k, v: `[B, TK, HKV, D]`.
        indices: `[B, T, HKV, NS]` int32/int64 block indices, `-1` = unused.

    Returns:
        o: `[B, T, HQ, D]` in `q.dtype`; lse: `[B, T, HQ]` fp32.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return SparseAttentionFunction.apply(q, k, v, indices, block_size, scale, q_start)
