"""Shared fixtures: an in-process gloo world of one with Megatron's parallel state."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")


@pytest.fixture(scope="session")
def megatron_world(tmp_path_factory):
    """torch.distributed (gloo, world 1) + Megatron parallel_state (TP=CP=1) + CPU shims, once per session."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from ssa_pretrain import cpu_shims

    if not dist.is_initialized():
        store = tmp_path_factory.mktemp("pg") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    cpu_shims.install()
    cpu_shims.seed_model_parallel_rng(1234)
    yield
