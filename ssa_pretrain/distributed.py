"""Process start under torchrun or srun, and Megatron's tensor / context / data parallel groups.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under `srun` (one task per
GPU) we read SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, take MASTER_ADDR from the first host of
SLURM_JOB_NODELIST and derive MASTER_PORT from the job id, unless they are set already. A plain
`python -m ssa_pretrain.train` is a world of one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core import parallel_state


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def first_host(nodelist: str) -> str:
    """First host of a Slurm node list: `gpu[003-005,9],cpu1` -> `gpu003`."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def read_env() -> DistEnv:
    """Rank and world from torchrun or Slurm variables (torchrun wins); fills MASTER_ADDR/PORT for Slurm."""
    env = os.environ
    if "RANK" in env:
        rank, world, local = int(env["RANK"]), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        rank, world, local = (
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
        )
        env.setdefault("MASTER_ADDR", first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000))
    else:
        rank, world, local = 0, 1, 0
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    # DeepSpeed reads these from the environment whatever launched us.
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    return DistEnv(rank, world, local, device)


def init_distributed(tp: int = 1, cp: int = 1, timeout_minutes: int = 30) -> DistEnv:
    """Start the process group (NCCL on GPU, gloo on CPU) and Megatron's TP/CP/DP groups."""
    info = read_env()
    if info.world_size % (tp * cp):
        raise ValueError(
            f"world size {info.world_size} is not a multiple of parallel.tp * parallel.cp = {tp * cp}"
        )
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if info.device.type == "cuda" else "gloo",
            rank=info.rank,
            world_size=info.world_size,
            timeout=timedelta(minutes=timeout_minutes),
            store=dist.HashStore() if info.world_size == 1 else None,  # a world of one needs no port
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=cp)
    return info


def shutdown() -> None:
    """End the job cleanly: barrier, then tear the groups down (avoids rare aborts at exit on gloo)."""
    if dist.is_initialized():
        dist.barrier()
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
