"""Triton block selection: block-mean scores on tensor cores, per-head normaliser, top-k by bitonic merges.

One program scores `BT` query tokens of one kv head against every past block, rows = (token, query head of the
group). Pass 1 computes each row's log-sum-exp over the complete blocks; pass 2 sums the group's softmax
probabilities per block and keeps a running top-`KP` of 64-bit keys `score bits << 32 | (2^32 - 1 - block)`:
one integer comparison orders by score, then by ascending block index (the tie rule), so the top-k is a
bitonic partial sort (`tl.topk`) of the chunk merged with the running list, never a full sort of the row.
"""

import torch

from ..backends import tl, triton
from ..select_blocks.naive import block_means

LOW_BITS = tl.constexpr(0xFFFFFFFF)  # block index j is stored as LOW_BITS - j in the low 32 bits of a key


@triton.jit
def select_blocks_kernel(
    q,  # [B, T, HQ, D]
    kbar,  # [B, HKV, NB, D]
    out,  # [B, T, HKV, K] int32
    T,
    NB,
    scale_log2,
    HKV: tl.constexpr,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    BS: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    BT: tl.constexpr,
    BN: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid `(cdiv(T, BT), B * HKV)`; tiles of late tokens (the most past blocks) start first."""
    pid_bh = tl.program_id(1)
    b, h = pid_bh // HKV, pid_bh % HKV
    t0 = (tl.num_programs(0) - 1 - tl.program_id(0)) * BT
    rows = tl.arange(0, BT * GP)
    tok = t0 + rows // GP  # [R]
    head = rows % GP
    row_ok = (tok < T) & (head < G)
    d = tl.arange(0, DP)
    q_rows = q + ((b * T + tok).to(tl.int64) * (HKV * G) + h * G + head) * D  # [R]
    qt = tl.load(q_rows[:, None] + d[None, :], mask=row_ok[:, None] & (d[None, :] < D), other=0.0)
    kbar_bh = kbar + pid_bh.to(tl.int64) * NB * D
    last = tl.minimum(t0 + BT, T) - 1  # last token of the tile

    # pass 1: log2-sum-exp of every row over its complete blocks (j + 1) * BS <= t + 1
    n_complete = (tok + 1) // BS  # [R]
    m = tl.full([BT * GP], float("-inf"), tl.float32)
    acc = tl.zeros([BT * GP], tl.float32)
    for j0 in range(0, (last + 1) // BS, BN):
        j = j0 + tl.arange(0, BN)
        kb = tl.load(
            kbar_bh + j[:, None] * D + d[None, :], mask=(j[:, None] < NB) & (d[None, :] < D), other=0.0
        )
        s = tl.dot(qt, tl.trans(kb), input_precision=PRECISION) * scale_log2  # [R, BN]
        s = tl.where(j[None, :] < n_complete[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        acc = acc * tl.exp2(m - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m = m_new
    lse = m + tl.log2(acc)  # -inf for rows without a complete block (they have no past block either)

    # pass 2: group scores of the past blocks j < t // BS, running top-KP keys per token
    n_past = tok // BS  # [R]
    tok_t = t0 + tl.arange(0, BT)  # [BT]
    best = tl.full([BT, KP], -1, tl.int64)  # -1 = empty; every real key is >= 0
    for j0 in range(0, last // BS, BN):
        j = j0 + tl.arange(0, BN)
        kb = tl.load(
            kbar_bh + j[:, None] * D + d[None, :], mask=(j[:, None] < NB) & (d[None, :] < D), other=0.0
        )
        s = tl.dot(qt, tl.trans(kb), input_precision=PRECISION) * scale_log2  # [R, BN]
        seen = row_ok[:, None] & (j[None, :] < n_past[:, None])
        p = tl.where(seen, tl.exp2(s - lse[:, None]), 0.0)
        score = tl.sum(tl.reshape(p, [BT, GP, BN]), 1)  # [BT, BN], summed over the group's heads
        key = (score.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (LOW_BITS - j[None, :].to(tl.int64))
        key = tl.where(j[None, :] < (tok_t // BS)[:, None], key, -1)
        worst = tl.min(best, 1)  # [BT], the KP-th best so far
        if tl.max(tl.max((key > worst[:, None]).to(tl.int32), 1), 0) > 0:  # some key enters a list
            if BN > KP:  # noqa: SIM108 (a compile-time branch: the two sides differ in shape)
                cand = tl.topk(key, KP)  # [BT, KP], descending
            else:
                cand = key
            best = tl.topk(tl.reshape(tl.join(best, cand), [BT, 2 * KP]), KP)

    block = tl.where(best < 0, -1, LOW_BITS - (best & LOW_BITS)).to(tl.int32)  # [BT, KP], best first
    slot = tl.arange(0, KP)
    out_rows = out + ((b * T + tok_t).to(tl.int64) * HKV + h) * K  # [BT]
    tl.store(out_rows, (tok_t // BS).to(tl.int32), mask=tok_t < T)  # slot 0: the own block
    tl.store(
        out_rows[:, None] + 1 + slot[None, :], block, mask=(tok_t[:, None] < T) & (slot[None, :] < K - 1)
    )


def select_blocks_fwd(
    q: torch.Tensor, k: torch.Tensor, block_size: int, block_count: int, scale: float
) -> torch.Tensor:
    """Launch `select_blocks_kernel`.

    Args:
        q: `[B, T, HQ, D]` fp16/bf16/fp32.
        k: `[B, T, HKV, D]`.

    Returns:
        indices: `[B, T, HKV, block_count]` int32, as `naive_select_blocks`.
    """
    batch, seq_len, num_heads, dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty(batch, seq_len, num_kv_heads, block_count, dtype=torch.int32, device=q.device)
    if block_count == 1:  # the own block alone
        own = torch.arange(seq_len, device=q.device, dtype=torch.int32) // block_size  # [T]
        return out.copy_(own[None, :, None, None].expand_as(out))
    # block means in fp32, rounded to the input dtype for the tensor cores: [B, NB, HKV, D] -> [B, HKV, NB, D]
    kbar = block_means(k.float(), block_size).transpose(1, 2).to(q.dtype).contiguous()
    group_pad = triton.next_power_of_2(group)
    tile_tokens = max(1, 64 // group_pad)  # 64 rows of (token, head): 1.6x faster than 128 at 64K on H100
    block_tile = max(16, triton.next_power_of_2(block_count - 1), 64 if seq_len >= 1024 else 16)
    grid = (triton.cdiv(seq_len, tile_tokens), batch * num_kv_heads)
    select_blocks_kernel[grid](
        q=q.contiguous(),
        kbar=kbar,
        out=out,
        T=seq_len,
        NB=kbar.shape[2],
        scale_log2=scale * 1.4426950408889634,
        HKV=num_kv_heads,
        G=group,
        GP=group_pad,
        D=dim,
        DP=max(16, triton.next_power_of_2(dim)),
        BS=block_size,
        K=block_count,
        KP=max(16, triton.next_power_of_2(block_count - 1)),
        BT=tile_tokens,
        BN=block_tile,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4,
        num_stages=2,
    )
    return out


@torch.no_grad()
def parallel_select_blocks(
    q: torch.Tensor, k: torch.Tensor, block_size: int, block_count: int, scale: float | None = None
) -> torch.Tensor:
    """Triton twin of `naive_select_blocks` (same arguments and result; inputs checked by the caller).

    Block means are rounded to the input dtype before the tensor-core products, so with fp16/bf16 inputs
    blocks whose scores differ by less than that rounding (~1e-3 relative) may rank differently from the
    fp32 reference; fp32 inputs use exact fp32 products.

    Args:
        q: `[B, T, HQ, D]` fp16/bf16/fp32; k: `[B, T, HKV, D]`.

    Returns:
        indices: `[B, T, HKV, block_count]` int32, `-1` = unused slot.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return select_blocks_fwd(q, k, block_size, block_count, scale)
