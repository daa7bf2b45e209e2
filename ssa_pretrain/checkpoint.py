"""Checkpoints: DeepSpeed's sharded model/optimizer states plus our metadata, written atomically and durably,
read without unpickling code.

Layout under `RUN_DIR/checkpoints/`::

    step-000200/               one complete checkpoint
      mp_rank_00_model_states.pt, zero_pp_rank_*_optim_states.pt    (DeepSpeed: weights, optimizer,
                                                                      LR scheduler; one file per shard)
      meta.json                 step, resolved config, tokenizer hash, dataset digest, data position (ours)
      rng_rank_00000.pt         each rank's RNG states (tensors only)
    latest                      the name of the newest complete checkpoint

Writing: every rank writes into `.tmp-step-000200/`, each file fsynced; after a barrier rank 0 fsyncs that
directory, renames it to `step-000200/`, fsyncs `checkpoints/`, and replaces `latest` the same way (write,
fsync, `os.replace`, fsync). So after a crash or a power loss `latest` names a complete checkpoint, and a
`.tmp-*` directory is never read (the next save removes it). A save that fails (a full disk) removes its
partial directory and leaves the previous checkpoints as they were. Of the checkpoints up to the one just
written the newest `keep_last` are kept (by step number; newer ones of an abandoned timeline are left alone).

Reading: every file is loaded with `torch.load(weights_only=True)`: tensors, containers and the three plain
types DeepSpeed stores (`SAFE_DEEPSPEED_TYPES`); anything else is refused before it runs. A run whose
`latest` pointer is lost resumes from the newest complete `step-*` directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist

from ssa_pretrain.config import Config, flatten
from ssa_pretrain.errors import UserError

LATEST = "latest"
META = "meta.json"
MODEL_STATES = "mp_rank_00_model_states.pt"
STEP_DIR = re.compile(r"step-(\d+)")
SAFE_DEEPSPEED_TYPES = (  # the non-tensor objects in DeepSpeed's ZeRO-1/2 optimizer files: plain data
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
)

# What a resumed run may change. FIXED: the checkpoint's shapes or its data position depend on it (never).
# FREE: logging, evaluation and checkpoint cadence, paths whose content is checked by hash, how the same math
# is computed (recomputation, fused kernels, the fused loss) (always; also absent from an older checkpoint).
# Everything else (optimizer, schedule, steps, method, precision) only with `--allow-config-change`.
FIXED = ("model.", "parallel.", "data.seq_len", "train.micro_batch_size", "train.seed")
FREE = (
    "logging.", "debug.", "data.dir", "data.tokenizer", "ssa.inference_mode", "train.log_interval",
    "train.eval_interval", "train.eval_batches", "train.save_interval", "train.keep_last",
    "train.max_nonfinite", "train.recompute", "train.fused_elementwise", "train.cross_entropy",
)  # fmt: skip

log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be resumed from or written; the message names it and the fix."""


def tag_for(step: int) -> str:
    return f"step-{step:06d}"


def step_of(path: Path) -> int | None:
    """The step a `step-N` directory name stands for; None for other names."""
    match = STEP_DIR.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full(err: BaseException) -> bool:
    """torch reports a failed write as a RuntimeError; the OSError behind it is in the exception chain."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def durable_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file through `write(file)` and fsync it; a full disk raises `CheckpointError` naming it."""
    try:
        with open(path, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:
        if _disk_full(err):
            raise CheckpointError(f"disk full while writing {path}") from err
        raise


def safe_load(path: Path, map_location: Any = None) -> Any:
    """`torch.load(weights_only=True)` with DeepSpeed's plain types allowed; a file holding anything else, or
    a damaged one, raises `CheckpointError` naming it."""
    import importlib

    allowed = []
    for name in SAFE_DEEPSPEED_TYPES:
        module, _, attr = name.rpartition(".")
        allowed.append(getattr(importlib.import_module(module), attr))
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1]
        raise CheckpointError(
            f"{path}: refused to load: it holds objects that are neither tensors nor DeepSpeed's plain "
            f"checkpoint data ({reason}). This program did not write it; restore the file from a trusted "
            "copy or resume from another checkpoint"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: unreadable, the file is truncated or damaged ({err})") from None


def use_safe_checkpoint_files(engine) -> None:
    """Make a DeepSpeed engine write its checkpoint files durably and read them with `safe_load`."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        def save(self, state_dict, path: str) -> None:
            zip_format = self.zipfile_serialization
            durable_write(
                Path(path), lambda f: torch.save(state_dict, f, _use_new_zipfile_serialization=zip_format)
            )

        def load(self, path: str, map_location=None):
            return safe_load(Path(path), map_location)

    engine.checkpoint_engine = SafeTorchCheckpointEngine(engine._config)


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


def read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / META}: unreadable checkpoint metadata ({err})") from err


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The `step-N` directories holding a readable meta.json of step N and the model states, oldest first."""
    found = []
    for path in ckpt_dir.glob("step-*"):
        step = step_of(path)
        if step is None or not (path / MODEL_STATES).is_file():
            continue
        try:
            if json.loads((path / META).read_text()).get("step") == step:
                found.append(path)
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(found, key=step_of)


def _point_latest_hint(ckpt_dir: Path, before: int | None = None) -> str:
    """Which checkpoint to point `latest` at: the newest complete one (older than step `before`)."""
    candidates = [p for p in complete_checkpoints(ckpt_dir) if before is None or step_of(p) < before]
    if not candidates:
        return "no complete checkpoint is left: start a new run directory"
    return (
        f"the newest complete checkpoint before it is {candidates[-1].name}: resume from it with "
        f"`echo {candidates[-1].name} > {ckpt_dir / LATEST}`"
    )


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint `latest` names, validated; without the pointer, the newest complete `step-N`
    directory; None when the run has none yet."""
    pointer = ckpt_dir / LATEST
    if not pointer.is_file():
        complete = complete_checkpoints(ckpt_dir)
        if not complete:
            return None
        if _rank() == 0:
            log.warning(f"{pointer} is missing; resuming from the newest complete checkpoint {complete[-1]}")
        return complete[-1]
    path = ckpt_dir / pointer.read_text().strip()
    if not (path / META).is_file():
        raise CheckpointError(
            f"{pointer} names {path.name}, which has no {META}: the checkpoint is incomplete or was moved; "
            f"{_point_latest_hint(ckpt_dir)}"
        )
    return path


def check_resumable(
    path: Path,
    meta: dict[str, Any],
    cfg: Config,
    tokenizer_sha256: str,
    dataset_sha256: str,
    allow_config_change: bool,
) -> dict[str, tuple[Any, Any]]:
    """Raise `CheckpointError` unless `cfg` can continue the checkpoint at `path`; return the config changes
    it applies (`{dotted key: (checkpoint value, config value)}`, non-empty only when allowed)."""

    def matches(key: str, patterns: tuple[str, ...]) -> bool:
        return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)

    saved, current = flatten(meta["config"]), flatten(cfg.model_dump(mode="json"))
    changed = {
        key: (saved.get(key), current.get(key))
        for key in sorted(saved.keys() | current.keys())
        if saved.get(key) != current.get(key) and not matches(key, FREE)
    }
    fixed = {key: change for key, change in changed.items() if matches(key, FIXED)}
    problems = [f"{key}: checkpoint {old!r}, config {new!r}" for key, (old, new) in changed.items()]
    if meta["tokenizer_sha256"] != tokenizer_sha256:
        problems.append(f"tokenizer: checkpoint was trained with sha256 {meta['tokenizer_sha256'][:12]}…")
    if meta.get("dataset_sha256", dataset_sha256) != dataset_sha256:
        problems.append(
            f"dataset: the checkpoint was trained on {saved['data.dir']}/train (manifest digest "
            f"{meta['dataset_sha256'][:12]}…), this run reads {cfg.data.dir}/train (digest "
            f"{dataset_sha256[:12]}…): another sample stream; resume on the dataset the run started with"
        )
    if problems and (fixed or len(problems) > len(changed) or not allow_config_change):
        allow = (
            ""
            if fixed or len(problems) > len(changed)
            else f"\nor pass --allow-config-change to apply the changes from step {meta['step']} on "
            "(recorded in RUN_DIR/config-changes.jsonl)."
        )
        raise CheckpointError(
            f"cannot resume from {path}: the config does not match the checkpoint:\n  "
            + "\n  ".join(problems)
            + f"\nThe run's own {path.parent.parent / 'config.yaml'} is its config; use it, or a new "
            f"--run-dir for a new run{allow}"
        )
    return changed


def save(engine, ckpt_dir: Path, step: int, meta: dict[str, Any], keep_last: int) -> Path:
    """Save a complete checkpoint of `step` (collective: every rank calls it)."""
    rank = _rank()
    tag = tag_for(step)
    tmp = ckpt_dir / f".tmp-{tag}"
    if rank == 0:
        for stale in ckpt_dir.glob(".tmp-step-*"):  # left by a killed save
            shutil.rmtree(stale, ignore_errors=True)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    _barrier()
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tmp.name, save_latest=False)
        durable_write(tmp / f"rng_rank_{rank:05d}.pt", lambda f: torch.save(_rng_state(), f))
        if rank == 0:
            text = json.dumps({"step": step, **meta}, indent=1).encode()
            durable_write(tmp / META, lambda f: f.write(text))
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, CheckpointError) and not _disk_full(err):
            raise
        previous = latest_checkpoint(ckpt_dir)
        reason = err if isinstance(err, CheckpointError) else f"disk full while writing into {tmp}"
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(
            f"{reason}; removed the partial checkpoint {tmp.name}, {kept}. Free space on that file system "
            "and resume with the same command."
        ) from err
    _barrier()
    if rank == 0:
        final = ckpt_dir / tag
        if final.exists():
            shutil.rmtree(final)
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(ckpt_dir)
        pointer_tmp = ckpt_dir / f".{LATEST}.tmp"
        durable_write(pointer_tmp, lambda f: f.write(tag.encode()))
        os.replace(pointer_tmp, ckpt_dir / LATEST)
        _fsync_dir(ckpt_dir)
        older = sorted((p for p in ckpt_dir.glob("step-*") if (step_of(p) or step) < step), key=step_of)
        for old in older[: max(0, len(older) - (keep_last - 1))]:
            shutil.rmtree(old)
    _barrier()
    return ckpt_dir / tag


def load(engine, path: Path) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and this rank's RNG from `path`; returns the metadata."""
    meta = read_meta(path)
    try:
        load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name)
        if load_path is None:
            raise CheckpointError(f"{path}: DeepSpeed found no model states in it")
        rng_file = path / f"rng_rank_{_rank():05d}.pt"
        if rng_file.is_file():  # absent when resuming on more ranks than saved: RNG then stays as seeded
            _set_rng_state(safe_load(rng_file))
    except CheckpointError as err:
        hint = _point_latest_hint(path.parent, step_of(path))
        raise CheckpointError(f"{err}\nThe checkpoint {path} cannot be resumed from; {hint}") from None
    return meta
