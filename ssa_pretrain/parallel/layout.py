"""The load-balanced context-parallel layout (Megatron's): the sequence in `2·cp` chunks, rank `r` holds
chunks `r` and `2·cp − 1 − r`, in that order.

Causal attention costs the same on every rank this way, and the local sequence stays in increasing global
position, so a causal mask over the local order is the causal mask over global positions within the rank's
own chunks. Megatron's RoPE (`get_pos_emb_on_this_cp_rank`) slices positions the same way.

* `check_cp_seq_len(seq_len, cp_size, block_size)`: the length rule, as a ValueError naming the numbers.
* `split_sequence(x, cp_rank, cp_size, dim)`: this rank's share of a full sequence.
* `global_positions(seq_len, cp_rank, cp_size)`: the global positions of that share (RoPE, masks).
* `unsplit_sequence(shares, dim)` / `gather_sequence(x, group, dim)`: the inverse (tests, evaluation).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .collectives import all_gather, group_rank_size


def check_cp_seq_len(seq_len: int, cp_size: int, block_size: int = 1) -> None:
    """Raise ValueError unless `seq_len` is a positive multiple of `2 · cp_size · block_size`.

    Each rank's two chunks must hold whole sparse-attention blocks, so that block ids and block-key means are
    the same as on one process. Pad the sequence (or pick `data.seq_len`) to a multiple.
    """
    if cp_size < 1 or block_size < 1:
        raise ValueError(f"cp_size ({cp_size}) and block_size ({block_size}) must be >= 1")
    unit = 2 * cp_size * block_size
    if seq_len < 1 or seq_len % unit != 0:
        raise ValueError(
            f"context parallelism needs a sequence length that is a multiple of 2 * cp * block_size = "
            f"2 * {cp_size} * {block_size} = {unit}; got {seq_len} (the nearest valid lengths are "
            f"{max(unit, seq_len // unit * unit)} and {(seq_len // unit + 1) * unit}): change the sequence "
            f"length, the context-parallel size or the block size"
        )


def chunk_ids(cp_rank: int, cp_size: int) -> tuple[int, int]:
    """The two global chunk indices (of `2 · cp_size`) that rank `cp_rank` holds, in local order."""
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank must be in [0, {cp_size}), got {cp_rank}")
    return cp_rank, 2 * cp_size - 1 - cp_rank


def split_sequence(
    x: torch.Tensor, cp_rank: int, cp_size: int, dim: int = 1, block_size: int = 1
) -> torch.Tensor:
    """This rank's share of a full sequence: chunks `r` and `2·cp − 1 − r` of `2·cp`, concatenated.

    Args:
        x: `[..., T, ...]` with the sequence at `dim` (tokens/labels `[B, T]`: dim 1; Megatron
            activations `[T, B, ...]`: dim 0); `T` a multiple of `2 · cp_size · block_size`.
        block_size: also require whole blocks per chunk (sparse attention); 1 for any even split.

    Returns:
        `[..., T / cp_size, ...]` (a new tensor; differentiable).
    """
    dim = dim % x.ndim
    check_cp_seq_len(x.shape[dim], cp_size, block_size)
    chunks = x.chunk(2 * cp_size, dim=dim)
    first, second = chunk_ids(cp_rank, cp_size)
    return torch.cat([chunks[first], chunks[second]], dim=dim)


def global_positions(
    seq_len: int, cp_rank: int, cp_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Global positions of this rank's tokens, in local order.

    Args:
        seq_len: `T`, the full (global) sequence length, a multiple of `2 · cp_size`.

    Returns:
        `[T / cp_size]` int64: `r·C … (r+1)·C − 1` then `(2cp−1−r)·C … (2cp−r)·C − 1`, `C = T / (2·cp)`.
    """
    return split_sequence(torch.arange(seq_len, device=device), cp_rank, cp_size, dim=0)


def unsplit_sequence(shares: list[torch.Tensor] | tuple[torch.Tensor, ...], dim: int = 1) -> torch.Tensor:
    """Inverse of `split_sequence`: the full sequence from every rank's share (`shares[r]` from rank `r`).

    Args:
        shares: `cp` tensors `[..., 2C, ...]` with the sequence at `dim`.

    Returns:
        `[..., 2·cp·C, ...]` in global order.
    """
    cp_size = len(shares)
    dim = dim % shares[0].ndim
    ordered: list[torch.Tensor | None] = [None] * (2 * cp_size)
    for rank, share in enumerate(shares):
        if share.shape[dim] % 2:
            raise ValueError(f"share of rank {rank} has odd length {share.shape[dim]} at dim {dim}")
        first, second = chunk_ids(rank, cp_size)
        ordered[first], ordered[second] = share.chunk(2, dim=dim)
    return torch.cat(ordered, dim=dim)  # type: ignore[arg-type]


def gather_sequence(x: torch.Tensor, group: dist.ProcessGroup | None, dim: int = 1) -> torch.Tensor:
    """All ranks' shares gathered into the full sequence, differentiably (see `collectives.all_gather`
    for the gradient: every rank's incoming gradient is summed).

    Args:
        x: `[..., 2C, ...]`, this rank's share with the sequence at `dim`.

    Returns:
        `[..., 2·cp·C, ...]` in global order, on every rank.
    """
    _, size = group_rank_size(group)
    dim = dim % x.ndim
    gathered = all_gather(x, dim, group)  # [..., cp * 2C, ...] in rank order
    return unsplit_sequence(gathered.chunk(size, dim=dim), dim=dim)
