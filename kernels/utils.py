"""Helpers shared by the reference ops: input checks, query chunking and a -inf-safe softmax."""

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

QUERY_CHUNK_SIZE = 256  # queries per chunk: at T=8192, HQ=32 a full-attention chunk scores 256 MiB in fp32


def accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the reference computes in: fp32, or fp64 when an input is fp64 (gradcheck runs in double)."""
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def softmax_lse(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last dimension and its natural log-sum-exp.

    Args:
        logits: `[..., N]`, masked entries set to `-inf`.

    Returns:
        p: `[..., N]`, all zeros on rows that are entirely `-inf`.
        lse: `[...]`, `-inf` on those rows (and everywhere when N == 0).
        Neither the forward nor the backward produces NaN.
    """
    if logits.shape[-1] == 0:  # e.g. no complete key block yet
        return logits, logits.new_full(logits.shape[:-1], float("-inf"))
    shift = logits.amax(-1, keepdim=True).detach()  # any finite shift gives the same result and gradients
    shift = shift.masked_fill(shift == float("-inf"), 0)
    weights = torch.exp(logits - shift)
    total = weights.sum(-1, keepdim=True)
    empty = total == 0
    total = total.masked_fill(empty, 1)
    lse = (shift + total.log()).masked_fill(empty, float("-inf"))
    return weights / total, lse.squeeze(-1)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of a query chunk to the keys it may see, with GQA.

    Args:
        q: `[B, C, HQ, D]`.
        k, v: `[B, S, HKV, D]` (already in the accumulation dtype).
        visible: `[B or 1, C, HKV or 1, S]` bool, True where query `c` may attend to key `s`; None: every key.

    Returns:
        o: `[B, C, HQ, D]` in `q.dtype`; lse `[B, C, HQ]` (`-inf`, with `o = 0`, where no key is visible).
    """
    num_kv_heads = k.shape[2]
    # [B, C, HKV, G, D] x [B, S, HKV, D] -> [B, C, HKV, G, S]
    logits = torch.einsum("bchgd,bshd->bchgs", q.to(k.dtype).unflatten(2, (num_kv_heads, -1)), k) * scale
    if visible is not None:
        logits = logits.masked_fill(~visible[:, :, :, None, :], float("-inf"))
    p, lse = softmax_lse(logits)
    o = torch.einsum("bchgs,bshd->bchgd", p, v)  # [B, C, HKV, G, D]
    return o.flatten(2, 3).to(q.dtype), lse.flatten(2, 3)


def causal_mask(start: int, num_queries: int, num_keys: int, device: torch.device) -> torch.Tensor:
    """`[1, C, 1, S]` bool: query at position `start + c` sees keys `s <= start + c`."""
    t = torch.arange(start, start + num_queries, device=device)[:, None]  # [C, 1]
    return (torch.arange(num_keys, device=device) <= t)[None, :, None, :]


def map_query_chunks(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    chunk_size: int,
    per_query: tuple[torch.Tensor, ...],
    *shared: object,
) -> tuple[torch.Tensor, ...]:
    """Apply `fn(start, *chunks, *shared)` to consecutive query chunks and concatenate its outputs on dim 1.

    When the sequence spans several chunks, each chunk is checkpointed: the backward recomputes it, so the
    chunks' score tensors are never all alive at once, in training as in inference.

    Args:
        fn: maps the chunk's first position and the `[B, C, ...]` slices of `per_query` to a tuple of
            `[B, C, ...]` tensors.
        chunk_size: `C`, the number of query positions per chunk (the last chunk may be shorter).
        per_query: tensors `[B, T, ...]` sliced along the sequence.
        shared: passed whole to every call.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    seq_len = per_query[0].shape[1]
    if seq_len <= chunk_size:  # one chunk: nothing to bound
        return fn(0, *per_query, *shared)
    outputs = []
    for start in range(0, seq_len, chunk_size):
        chunks = (x[:, start : start + chunk_size] for x in per_query)
        outputs.append(checkpoint(fn, start, *chunks, *shared, use_reentrant=False))
    return tuple(torch.cat(parts, dim=1) for parts in zip(*outputs, strict=True))


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, *, same_length: bool) -> None:
    """Raise ValueError unless q `[B, TQ, HQ, D]`, k and v `[B, TK, HKV, D]` fit together (HQ % HKV == 0).

    `same_length` also requires TQ == TK. `v` may be None (block selection reads no values).
    """
    named = {"q": q, "k": k} if v is None else {"q": q, "k": k, "v": v}
    for name, x in named.items():
        if x.ndim != 4:
            raise ValueError(f"{name} must be [batch, seq, heads, dim], got shape {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty, shape {tuple(x.shape)}")
        if x.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but q has {q.dtype}; cast them to one dtype")
    if v is not None and v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch size or head dim")
    if same_length and k.shape[1] != q.shape[1]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} need the same sequence length")
    if q.shape[2] % k.shape[2] != 0:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")


def check_positive(**values: int) -> None:
    """Raise ValueError unless every named integer argument is >= 1."""
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_scale(scale: float | None) -> None:
    """Raise ValueError unless the logit scale is None (the default `1 / sqrt(D)`) or > 0 (the selection
    kernel takes row maxima of unscaled logits)."""
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
