"""Triton block selection: scores on the tensor cores, then a top-k without a sort (twins of `naive.py`).

* `block_scores_kernel`: one program scores `BT` query tokens of one kv head against every past block on the
  tensor cores, rows = (token, query head of the group). Pass 1 computes each row's log-sum-exp over the
  complete blocks; pass 2 sums the group's softmax probabilities per block, writes the `[BT, BN]` score tiles
  to a scratch buffer `[B·TC·HKV, NB]` fp32 (only past blocks), and the maximum of each tile row — one
  *segment* of `BN` blocks — to `[B·TC·HKV, NSEG]`. Tiles whose blocks are complete (pass 1) or past (pass 2)
  for every row of the program skip the masks; only the last one or two tiles of a row are masked.
* `top_blocks_kernel`: the `K − 1` choices of a row, one at a time, by 64-bit *keys* `score bits << 32 |
  (2^32 − 1 − block)`: scores are >= 0, so one integer order sorts by score, then lower block first (the tie
  rule). A segment enters the list with the key of its maximum at its first block, an upper bound of every
  key in it that no other segment's keys fall between; the best entry's segment is re-read, its best key
  below the entry is the next choice, and the one below that becomes the segment's entry. Work per row:
  `K − 1` times the segment list and one segment, instead of a sort of the row.

The query axis is processed in chunks of `TC` tokens so that the scratch buffer stays under
`SCRATCH_BYTES`. Why two kernels and no 64-bit work in the score kernel: docs/PERFORMANCE.md.
"""

import torch

from ..backends import tl, triton
from ..select_blocks.naive import block_means

SCRATCH_BYTES = 256 * 2**20
"""Upper bound of the score scratch buffer; longer sequences are scored in query chunks."""


@triton.jit
def block_keys(x, j, valid):
    """64-bit keys `score bits << 32 | (2^32 − 1 − block)` of scores `x >= 0` at blocks `j`; `-1` where not
    `valid`. One integer order sorts by score, then by lower block among equal scores: the tie rule."""
    keys = (x.to(tl.int32, bitcast=True).to(tl.int64) << 32) | (0xFFFFFFFF - j.to(tl.int64))
    return tl.where(valid, keys, -1)


@triton.jit
def block_logits(
    qt,
    kbar_bh,
    j0,
    NB,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    BN: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
):
    """`[R, BN]` unscaled logits of the rows `qt` against blocks `j0 … j0 + BN − 1`, and those blocks;
    `MASKED`: some of them may lie past the `NB` means. (Callers scale inside their `exp2`: one FMA.)"""
    j = j0 + tl.arange(0, BN)
    d = tl.arange(0, D_PAD)
    kb_ptrs = kbar_bh + j[:, None] * D + d[None, :]
    if MASKED:
        kb = tl.load(kb_ptrs, mask=(j[:, None] < NB) & (d[None, :] < D), other=0.0)
    else:
        kb = tl.load(kb_ptrs, mask=d[None, :] < D, other=0.0)
    return tl.dot(qt, tl.trans(kb), input_precision=PRECISION), j


@triton.jit
def lse_step(
    qt,
    kbar_bh,
    j0,
    m,
    acc,
    n_complete,
    NB,
    scale_log2,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    BN: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
):
    """Online log2-sum-exp of pass 1 over one tile: `m` (the largest unscaled logit; `scale_log2 > 0`) and
    `acc` updated; `MASKED`: only blocks `j < n_complete` count (`[R]`), else all of the tile's blocks are
    complete for every row."""
    s, j = block_logits(qt, kbar_bh, j0, NB, D, D_PAD, BN, PRECISION, MASKED)
    if MASKED:
        s = tl.where(j[None, :] < n_complete[:, None], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = m_new
    shift = m_safe * scale_log2
    acc = acc * tl.exp2(m * scale_log2 - shift) + tl.sum(tl.exp2(s * scale_log2 - shift[:, None]), 1)
    return m_new, acc


@triton.jit
def score_step(
    qt,
    kbar_bh,
    j0,
    lse,
    n_past,
    tok_t,
    row,
    t_end,
    q_start,
    scores,
    segment_max,
    NB,
    NSEG,
    scale_log2,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    BS: tl.constexpr,
    BT: tl.constexpr,
    GP: tl.constexpr,
    BN: tl.constexpr,
    PRECISION: tl.constexpr,
    MASKED: tl.constexpr,
):
    """Pass 2 over one tile: the group scores of blocks `j0 … j0 + BN − 1` to `scores`, their maximum per
    token to `segment_max`. Rows to ignore carry `lse = +inf`; `MASKED`: only past blocks `j < n_past`
    (`[R]`) count, else the tile is past for every row and every token is below `t_end`."""
    s, j = block_logits(qt, kbar_bh, j0, NB, D, D_PAD, BN, PRECISION, MASKED)
    p = tl.exp2(s * scale_log2 - lse[:, None])
    if MASKED:
        p = tl.where(j[None, :] < n_past[:, None], p, 0.0)
    score = tl.sum(tl.reshape(p, [BT, GP, BN]), 1)  # [BT, BN], summed over the group's heads
    if MASKED:
        past = (tok_t[:, None] < t_end) & (j[None, :] < ((q_start + tok_t) // BS)[:, None])
        tl.store(scores + row[:, None] * NB + j[None, :], score, mask=past)
        score = tl.where(past, score, -1.0)
        tl.store(segment_max + row * NSEG + j0 // BN, tl.max(score, 1), mask=tok_t < t_end)
    else:
        tl.store(scores + row[:, None] * NB + j[None, :], score)
        tl.store(segment_max + row * NSEG + j0 // BN, tl.max(score, 1))


@triton.jit
def block_scores_kernel(
    q,  # [B, T, HQ, D]
    kbar,  # [B, HKV, NB, D]
    scores,  # [B * TC * HKV, NB] fp32 scratch, rows (b, token t_start + i, kv head)
    segment_max,  # [B * TC * HKV, NSEG] fp32 scratch: maximum score of each segment of BN blocks, -1 if none
    T,
    NB,
    NSEG,
    q_start,
    t_start,
    t_count,
    scale_log2,
    HKV: tl.constexpr,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    BS: tl.constexpr,
    BT: tl.constexpr,
    BN: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid `(cdiv(t_count, BT), B * HKV)`; tiles of late tokens (the most past blocks) start first.

    Query row `t` is at position `q_start + t` (a context-parallel share); `kbar` covers the sequence.
    """
    pid_bh = tl.program_id(1)
    b, h = pid_bh // HKV, pid_bh % HKV
    t0 = t_start + (tl.num_programs(0) - 1 - tl.program_id(0)) * BT
    t_end = tl.minimum(t_start + t_count, T)
    rows = tl.arange(0, BT * GP)
    tok = t0 + rows // GP  # [R]
    head = rows % GP
    row_ok = (tok < t_end) & (head < G)
    d = tl.arange(0, D_PAD)
    q_rows = q + ((b * T + tok).to(tl.int64) * (HKV * G) + h * G + head) * D  # [R]
    qt = tl.load(q_rows[:, None] + d[None, :], mask=row_ok[:, None] & (d[None, :] < D), other=0.0)
    kbar_bh = kbar + pid_bh.to(tl.int64) * NB * D
    last = q_start + tl.minimum(t0 + BT, t_end) - 1  # position of the last token of the tile
    whole_tile = t0 + BT <= t_end  # every token of the tile is a row of this chunk

    # pass 1: log2-sum-exp of every row over its complete blocks (j + 1) * BS <= t + 1; first the tiles
    # complete for every row, without masks, then the row's last tiles with them (also in pass 2)
    n_complete = (q_start + tok + 1) // BS  # [R]
    unmasked_end = (q_start + t0 + 1) // BS // BN * BN
    m = tl.full([BT * GP], float("-inf"), tl.float32)
    acc = tl.zeros([BT * GP], tl.float32)
    for masked in tl.static_range(2):
        lo = unmasked_end if masked else 0
        hi = (last + 1) // BS if masked else unmasked_end
        for j0 in range(lo, hi, BN):
            m, acc = lse_step(
                qt, kbar_bh, j0, m, acc, n_complete, NB, scale_log2, D, D_PAD, BN, PRECISION, masked
            )
    # -inf for rows without a complete block (they have no past block either); +inf for padding rows: p = 0
    lse = tl.where(row_ok, m * scale_log2 + tl.log2(acc), float("inf"))

    # pass 2: group scores of the past blocks j < t // BS -> scratch, segment maxima
    n_past = (q_start + tok) // BS  # [R]
    tok_t = t0 + tl.arange(0, BT)  # [BT]
    row = ((b * t_count + tok_t - t_start) * HKV + h).to(tl.int64)  # [BT]
    unmasked_end = tl.where(whole_tile, (q_start + t0) // BS // BN * BN, 0)  # past for every row
    for masked in tl.static_range(2):
        lo = unmasked_end if masked else 0
        hi = last // BS if masked else unmasked_end
        for j0 in range(lo, hi, BN):
            score_step(
                qt, kbar_bh, j0, lse, n_past, tok_t, row, t_end, q_start, scores, segment_max, NB, NSEG,
                scale_log2, D, D_PAD, BS, BT, GP, BN, PRECISION, masked,
            )  # fmt: skip


@triton.jit
def top_blocks_kernel(
    scores,  # [B * TC * HKV, NB] fp32 scratch
    segment_max,  # [B * TC * HKV, NSEG] fp32 scratch
    out,  # [B, T, HKV, K] int32
    T,
    NB,
    NSEG,
    q_start,
    t_start,
    t_count,
    num_rows,
    HKV: tl.constexpr,
    BS: tl.constexpr,
    K: tl.constexpr,
    ROWS: tl.constexpr,
    NSEGP: tl.constexpr,
    SEG: tl.constexpr,
):
    """Grid `(cdiv(num_rows, ROWS),)`; row `r` = (b, token t_start + i, kv head h), `num_rows = B·TC·HKV`."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [ROWS]
    row_ok = r < num_rows
    b = r // (t_count * HKV)
    tok = t_start + (r // HKV) % t_count
    n_past = (q_start + tok) // BS
    seg = tl.arange(0, NSEGP)[None, :]
    written = row_ok[:, None] & (seg < NSEG) & (seg * SEG < n_past[:, None])  # segments holding past blocks
    seg_max = tl.load(segment_max + r.to(tl.int64)[:, None] * NSEG + seg, mask=written, other=-1.0)
    # a segment's entry: the key of its maximum at its first block, >= the key of every block in it
    entry = block_keys(seg_max, seg * SEG, written)  # [ROWS, NSEGP]
    row_scores = scores + r.to(tl.int64)[:, None] * NB  # [ROWS, 1]
    in_seg = tl.arange(0, SEG)[None, :]
    out_rows = out + ((b * T + tok) * HKV + r % HKV).to(tl.int64) * K  # [ROWS]
    tl.store(out_rows, n_past.to(tl.int32), mask=row_ok)  # slot 0: the own block
    for slot in range(1, K):
        top = tl.max(entry, 1)  # [ROWS]: the best entry, -1 when no block is left
        top_seg = tl.maximum(0xFFFFFFFF - (top & 0xFFFFFFFF), 0) // SEG  # its segment (entries keep it)
        j = top_seg[:, None] * SEG + in_seg  # [ROWS, SEG]
        in_past = row_ok[:, None] & (j < n_past[:, None])
        keys = block_keys(tl.load(row_scores + j, mask=in_past, other=0.0), j, in_past)
        chosen = tl.max(tl.where(keys <= top[:, None], keys, -1), 1)  # the best key left: at most the entry
        block = tl.where(chosen < 0, -1, 0xFFFFFFFF - (chosen & 0xFFFFFFFF))
        tl.store(out_rows + slot, block.to(tl.int32), mask=row_ok)
        following = tl.max(tl.where(keys < chosen[:, None], keys, -1), 1)  # the keys taken are all >= chosen
        entry = tl.where(seg == top_seg[:, None], following[:, None], entry)


def parallel_select_blocks_from_means(
    q: torch.Tensor,
    kbar: torch.Tensor,
    q_start: int,
    block_size: int,
    block_count: int,
    scale: float,
    *,
    tile_rows: int = 128,
    tile_blocks: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Launch `block_scores_kernel` and `top_blocks_kernel` over query chunks.

    Args:
        q: `[B, R, HQ, D]` fp16/bf16/fp32, the queries at sequence positions `q_start … q_start + R − 1`.
        kbar: `[B, NB, HKV, D]` fp32 means of the complete key blocks of the sequence (at least those before
            the last query: context parallelism all-gathers them).
        tile_rows, tile_blocks, num_warps: the score tile `[(token, head) rows, blocks]` and its warps
            (`tools/bench_attention.py --tune select` sweeps them). Defaults, the fastest on an H100 (bf16,
            D = 64, docs/perf/tune_attention.jsonl): 128 rows; 32 blocks with 4 warps up to 1,024 blocks
            (8K tokens at BS = 16), else 64 blocks with 8 warps.

    Returns:
        indices: `[B, R, HKV, block_count]` int32 global block ids, the rows of `naive_select_blocks` for
        these positions.
    """
    batch, seq_len, num_heads, dim = q.shape
    num_blocks, num_kv_heads = kbar.shape[1], kbar.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty(batch, seq_len, num_kv_heads, block_count, dtype=torch.int32, device=q.device)
    if block_count == 1 or num_blocks == 0:  # the own block alone (no token has a past block to choose)
        own = torch.arange(q_start, q_start + seq_len, device=q.device, dtype=torch.int32) // block_size
        out.copy_(own[None, :, None, None].expand_as(out))
        out[..., 1:] = -1
        return out
    # rounded to the input dtype for the tensor cores: [B, NB, HKV, D] -> [B, HKV, NB, D]
    kbar = kbar.transpose(1, 2).to(q.dtype).contiguous()
    q = q.contiguous()
    group_pad = triton.next_power_of_2(group)
    tile_blocks = tile_blocks or (32 if num_blocks <= 1024 else 64)
    num_warps = num_warps or (4 if tile_blocks <= 32 else 8)
    tile_tokens = max(1, tile_rows // group_pad)
    row_bytes = batch * num_kv_heads * num_blocks * 4
    chunk = min(seq_len, max(tile_tokens, SCRATCH_BYTES // row_bytes // tile_tokens * tile_tokens))
    scratch = torch.empty(batch * chunk * num_kv_heads * num_blocks, dtype=torch.float32, device=q.device)
    num_segments = triton.cdiv(num_blocks, tile_blocks)
    segment_max = torch.empty(
        batch * chunk * num_kv_heads, num_segments, dtype=torch.float32, device=q.device
    )
    padded_segments = triton.next_power_of_2(num_segments)
    top_rows = max(1, min(64, 2048 // padded_segments))
    for t_start in range(0, seq_len, chunk):
        t_count = min(chunk, seq_len - t_start)
        rows = dict(T=seq_len, NB=num_blocks, NSEG=num_segments, HKV=num_kv_heads, BS=block_size)
        rows.update(q_start=q_start, t_start=t_start, t_count=t_count)  # this chunk's rows, for both kernels
        block_scores_kernel[(triton.cdiv(t_count, tile_tokens), batch * num_kv_heads)](
            q=q,
            kbar=kbar,
            scores=scratch,
            segment_max=segment_max,
            scale_log2=scale * 1.4426950408889634,
            G=group,
            GP=group_pad,
            D=dim,
            D_PAD=max(16, triton.next_power_of_2(dim)),  # head dim padded for `tl.arange` / tl.dot
            BT=tile_tokens,
            BN=tile_blocks,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            num_warps=num_warps,
            num_stages=2,
            **rows,
        )
        num_rows = batch * t_count * num_kv_heads
        top_blocks_kernel[(triton.cdiv(num_rows, top_rows),)](
            scores=scratch,
            segment_max=segment_max,
            out=out,
            num_rows=num_rows,
            K=block_count,
            ROWS=top_rows,
            NSEGP=padded_segments,
            SEG=tile_blocks,
            **rows,
        )
    return out


def select_blocks_fwd(
    q: torch.Tensor, k: torch.Tensor, block_size: int, block_count: int, scale: float, **tiles: int
) -> torch.Tensor:
    """`parallel_select_blocks_from_means` of the whole sequence: q `[B, T, HQ, D]`, k `[B, T, HKV, D]`."""
    return parallel_select_blocks_from_means(
        q, block_means(k.float(), block_size), 0, block_size, block_count, scale, **tiles
    )


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
