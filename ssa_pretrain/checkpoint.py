"""Checkpoints: DeepSpeed's sharded model/optimizer states plus our metadata, written atomically.

Layout under `RUN_DIR/checkpoints/`::

    step-000200/               one complete checkpoint
      mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt    (DeepSpeed: weights, optimizer,
                                                                      LR scheduler; one file per shard)
      meta.json                 step, resolved config, tokenizer hash, data position (ours)
      rng_rank_00000.pt         each rank's RNG states (tensors only: loaded with weights_only=True)
    latest                      the name of the newest complete checkpoint

Every rank writes into `.tmp-step-000200/`; after a barrier rank 0 renames it and then replaces `latest`
(write a temporary file, `os.replace`). A crash at any point leaves `latest` naming a complete checkpoint,
and a `.tmp-*` directory is never read (the next save of that step replaces it). Only the newest
`keep_last` checkpoints are kept. DeepSpeed's own files are pickles that DeepSpeed loads itself; they are
only ever read from the run directory this program wrote.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ssa_pretrain.errors import UserError

LATEST = "latest"
META = "meta.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be resumed from; the message names it and the fix."""


def tag_for(step: int) -> str:
    return f"step-{step:06d}"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rng_state() -> dict[str, torch.Tensor]:
    """torch's generators (the only RNGs training draws from: modes and data order have their own seeds)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint `latest` names, validated; None when the run has none yet."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    if not (path / META).is_file():
        raise CheckpointError(
            f"{pointer} names {path.name}, which has no {META}: the checkpoint is incomplete or was moved. "
            f"Point {pointer} at an earlier complete step-* directory or start a new run directory."
        )
    return path


def read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / META}: unreadable checkpoint metadata ({err})") from err


def save(engine, ckpt_dir: Path, step: int, meta: dict[str, Any], keep_last: int) -> Path:
    """Save a complete checkpoint of `step` (collective: every rank calls it)."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    tag = tag_for(step)
    tmp_tag = f".tmp-{tag}"
    if rank == 0:
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    _barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, save_latest=False)
    torch.save(_rng_state(), ckpt_dir / tmp_tag / f"rng_rank_{rank:05d}.pt")
    if rank == 0:
        (ckpt_dir / tmp_tag / META).write_text(json.dumps({"step": step, **meta}, indent=1))
    _barrier()
    if rank == 0:
        final = ckpt_dir / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(ckpt_dir / tmp_tag, final)
        pointer_tmp = ckpt_dir / f".{LATEST}.tmp"
        pointer_tmp.write_text(tag)
        os.replace(pointer_tmp, ckpt_dir / LATEST)
        for old in sorted(ckpt_dir.glob("step-*"))[:-keep_last]:
            shutil.rmtree(old)
    _barrier()
    return ckpt_dir / tag


def load(engine, path: Path) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG from `path`; returns the metadata."""
    meta = read_meta(path)
    rank = dist.get_rank() if dist.is_initialized() else 0
    load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name)
    if load_path is None:
        raise CheckpointError(f"DeepSpeed found no model states in {path}; the checkpoint is damaged")
    rng_file = path / f"rng_rank_{rank:05d}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than saved: RNG then stays as seeded
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return meta
