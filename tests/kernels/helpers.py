"""Shared by the kernel tests: test shapes, one closeness check, and the selection rule written as loops."""

from typing import NamedTuple

import torch


class Shape(NamedTuple):
    """One test configuration: q `[batch, seq_len, heads, dim]`, k/v `[batch, seq_len, kv_heads, dim]`."""

    batch: int
    seq_len: int
    heads: int
    kv_heads: int
    dim: int
    block_size: int
    block_count: int


# GQA groups 1/2/16, lengths off and on the block grid, block_count above the blocks that exist, batch > 1
SHAPES = {
    "g1-B2-T37-bs4-k3": Shape(2, 37, 2, 2, 8, 4, 3),
    "g2-T63-bs16-k2": Shape(1, 63, 4, 2, 16, 16, 2),
    "g16-T100-bs4-k8": Shape(1, 100, 16, 1, 8, 4, 8),
    "g2-B2-T37-bs16-k8-more-than-exist": Shape(2, 37, 4, 2, 8, 16, 8),
    "g2-T5-bs16-k4-first-block-only": Shape(1, 5, 2, 1, 8, 16, 4),
    "g2-T100-bs16-k1-own-block-only": Shape(1, 100, 4, 2, 8, 16, 1),
    "g4-B2-T64-bs16-k3-whole-blocks": Shape(2, 64, 8, 2, 8, 16, 3),
}


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, atol: float, rtol: float) -> None:
    """Fail with `name` unless `out` has `ref`'s shape, no NaN, and matches it (same infinities)."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert not out.isnan().any(), f"{name}: output has NaN"
    torch.testing.assert_close(
        out.to(ref.dtype), ref, atol=atol, rtol=rtol, msg=lambda detail: f"{name}: {detail}"
    )


def select_blocks_by_rule(
    q: torch.Tensor, k: torch.Tensor, block_size: int, block_count: int, scale: float
) -> torch.Tensor:
    """DESIGN.md's selection rule, one token and query head at a time.

    q: `[B, T, HQ, D]`, k: `[B, T, HKV, D]` -> `[B, T, HKV, block_count]` int64 block indices, `-1` padding.
    Equal scores rank the lower block index first.
    """
    batch, seq_len, num_heads, _ = q.shape
    num_kv_heads = k.shape[2]
    group = num_heads // num_kv_heads
    result = torch.full((batch, seq_len, num_kv_heads, block_count), -1)
    for b in range(batch):
        for t in range(seq_len):
            own = t // block_size
            num_visible = (t + 1) // block_size  # blocks j with (j + 1) * BS <= t + 1
            for kv in range(num_kv_heads):
                scores = [0.0] * own  # past blocks j < own, all of them visible
                if own:
                    blocks = range(num_visible)
                    kbar = torch.stack(
                        [k[b, j * block_size : (j + 1) * block_size, kv].mean(0) for j in blocks]
                    )
                    for h in range(kv * group, (kv + 1) * group):
                        p = torch.softmax(kbar @ q[b, t, h] * scale, 0)
                        for j in range(own):
                            scores[j] += float(p[j])
                past = sorted(range(own), key=lambda j: (-scores[j], j))[: block_count - 1]
                result[b, t, kv, : 1 + len(past)] = torch.tensor([own, *past])
    return result


def assert_rel_close(name: str, ref: torch.Tensor, out: torch.Tensor, tol: float) -> None:
    """Fail with `name` unless `out` has `ref`'s shape, no NaN and `‖out - ref‖ / ‖ref‖ <= tol` (finite part).

    Infinities (e.g. `lse = -inf` of a row without keys) must sit at the same places in both.
    """
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert not out.isnan().any(), f"{name}: output has NaN"
    out, ref = out.double(), ref.double()
    finite = ref.isfinite()
    assert torch.equal(finite, out.isfinite()), f"{name}: infinities differ from the reference"
    error = (out[finite] - ref[finite]).norm() / ref[finite].norm().clamp_min(1e-30)
    assert error <= tol, f"{name}: relative error {error:.2e} > {tol:.0e}"
