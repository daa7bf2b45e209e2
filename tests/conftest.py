"""Shared fixtures: an in-process gloo world of one with Megatron's parallel state; tiny runs trained once per
session (TP=1 and TP=2, same seed) and their Hugging Face exports (tests/hf, tests/eval)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, build_tiny_dataset, train_command

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")


@pytest.fixture(scope="session")
def megatron_world(tmp_path_factory):
    """torch.distributed (gloo, world 1) + Megatron parallel_state (TP=CP=1) + CPU shims, once per session."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from ssa_pretrain import cpu_shims
    from ssa_pretrain.parallelize import seed_model_parallel_rng

    if not dist.is_initialized():
        store = tmp_path_factory.mktemp("pg") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    cpu_shims.install()
    seed_model_parallel_rng(1234)
    yield


# ------------------------------------------------- tiny runs and their exports (tests/hf, tests/eval)

TINY_RUN_OVERRIDES = [
    "data.seq_len=64",
    "ssa.block_size=8",
    "ssa.block_count=2",
    "ssa.full_ratio=0.0",  # every micro-step sparse in both layouts (as tests/train's tp2-sparse)
    "train.steps=2",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "train.eval_interval=100",
    "train.eval_batches=2",
    "train.save_interval=100",
    "logging.wandb=disabled",
    "logging.progress=false",
]


def ssa_convert(*args: str) -> subprocess.CompletedProcess:
    """`ssa convert ARGS` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ssa_pretrain.cli", "convert", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def runs(tiny_data, tmp_path_factory):
    """{"tp1": RUN_DIR, "tp2": RUN_DIR}: the same model and data, trained on one rank and with TP=2."""
    root = tmp_path_factory.mktemp("runs")
    procs = {
        name: subprocess.Popen(
            train_command(root / name, nproc, *TINY_RUN_OVERRIDES, f"data.dir={tiny_data}", *extra),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, nproc, extra in [("tp1", 1, []), ("tp2", 2, ["parallel.tp=2"])]
    }
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"training {name} failed:\n{out[-4000:]}"
    return {name: root / name for name in procs}


@pytest.fixture(scope="session")
def exported(runs, tmp_path_factory):
    """{"tp1": HF_DIR, "tp2": HF_DIR} written by `ssa convert RUN_DIR OUT_DIR`."""
    root = tmp_path_factory.mktemp("hf")
    outs = {}
    for name, run_dir in runs.items():
        proc = ssa_convert(run_dir, root / name)
        assert proc.returncode == 0, f"convert {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
        assert "max |HF - Megatron|" in proc.stdout, proc.stdout
        outs[name] = root / name
    return outs
