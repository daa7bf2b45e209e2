"""What the SSA core attention keeps for backward: never a view into Megatron's fused qkv projection output
(which would keep the whole projection alive per layer), in every variant and mode."""

from __future__ import annotations

import pytest
import torch

from ssa_pretrain.model.attention import SSACoreAttention
from ssa_pretrain.model.gpt import transformer_config
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("megatron_world")


@pytest.mark.parametrize("variant", ["full", "sparse", "ssa"])
@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_no_saved_tensor_views_the_fused_projection(variant, mode):
    cfg = tiny_config(f"ssa.variant={variant}")
    core = SSACoreAttention(transformer_config(cfg, torch.float32), 1, None, "self").train()
    core.mode = mode
    # As Megatron splits them: key and value are views of one [sq, b, kv heads, (G + 2) * d] projection.
    mixed = torch.randn(40, 2, 2, 4 * 32, requires_grad=True)
    query = mixed[..., : 2 * 32].reshape(40, 2, 4, 32)
    key, value = mixed[..., 2 * 32 : 3 * 32], mixed[..., 3 * 32 :]
    saved: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = core(query, key, value, None)
    assert mixed.untyped_storage().data_ptr() not in saved
    out.sum().backward()
    assert mixed.grad is not None and torch.isfinite(mixed.grad).all()
