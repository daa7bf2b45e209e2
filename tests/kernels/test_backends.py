"""Dispatch: `SSA_KERNELS_REFERENCE` keeps the named ops on their references where Triton would run."""

import pytest
import torch
from ssa_kernels import backends


@pytest.mark.skipif(not backends.HAS_TRITON, reason="needs triton (its interpreter stands in for CUDA)")
def test_reference_switch_names_ops(monkeypatch):
    x = torch.zeros(1, 4, 2, 16)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton would take CPU tensors now
    assert backends.use_triton("sparse_attention", x)
    monkeypatch.setenv("SSA_KERNELS_REFERENCE", "select_blocks,sparse_attention")
    with pytest.warns(UserWarning, match="SSA_KERNELS_REFERENCE"):
        assert not backends.use_triton("sparse_attention", x)
    monkeypatch.setenv("SSA_KERNELS_REFERENCE", "select_blocks")
    assert backends.use_triton("sparse_attention", x)
    monkeypatch.setenv("SSA_KERNELS_REFERENCE", "all")
    with pytest.warns(UserWarning, match="SSA_KERNELS_REFERENCE"):
        assert not backends.use_triton("full_attention", x)
