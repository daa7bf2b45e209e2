"""The training loop: build everything from one config, then step / log / validate / save until done.

    trainer = Trainer(cfg, run_dir)     # process group, model, DeepSpeed engine, data, resume
    trainer.train()                     # the loop below, top to bottom
    trainer.close()

Per optimizer step, `global_batch_size / (micro_batch_size * dp)` micro-steps; each draws its SSA mode
(`choose_mode`), runs forward + backward through the DeepSpeed engine, which accumulates gradients,
reduces them over the data-parallel group (ZeRO 1/2), clips and steps at the boundary.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from ssa_pretrain import checkpoint, cpu_shims
from ssa_pretrain.config import Config, ConfigError
from ssa_pretrain.data.loader import ShardLoader, iter_validation
from ssa_pretrain.data.manifest import manifest_digest
from ssa_pretrain.data.tokenizer import Tokenizer
from ssa_pretrain.distributed import init_distributed, shutdown
from ssa_pretrain.files import write_atomically
from ssa_pretrain.metrics import (
    MetricsLogger,
    flops_per_token,
    peak_flops,
    peak_memory_gib,
    save_resolved_config,
    truncate_metrics,
)
from ssa_pretrain.model.alignment import AttachAuxLoss
from ssa_pretrain.model.gpt import (
    alignment_per_layer,
    build_model,
    count_parameters,
    padded_vocab_size,
    set_attention_mode,
)
from ssa_pretrain.model.modes import Mode, choose_mode
from ssa_pretrain.optim import apply_hyperparameters
from ssa_pretrain.parallelize import context_parallel_share, parallelize, seed_model_parallel_rng


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses); the last good checkpoint is intact."""


class NaNGradient(torch.autograd.Function):
    """Identity whose gradient is NaN: `debug.inject_nonfinite_into=gradients` (the loss stays finite)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


class Trainer:
    """Owns the process group, engine, data and run directory of one training run."""

    def __init__(self, cfg: Config, run_dir: str | Path, allow_config_change: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = init_distributed(cfg.parallel.tp, cfg.parallel.cp)
        self.is_main = self.dist.rank == 0
        cpu_shims.install()

        self.dp = parallel_state.get_data_parallel_world_size()
        micro_per_step = cfg.train.global_batch_size // cfg.train.micro_batch_size
        if micro_per_step % self.dp:
            raise ConfigError(
                f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by "
                f"micro_batch_size x data-parallel size = {cfg.train.micro_batch_size} x {self.dp}"
            )
        self.grad_accum = micro_per_step // self.dp
        if cfg.train.eval_batches % self.dp:
            raise ConfigError(
                f"train.eval_batches={cfg.train.eval_batches} is not a multiple of the data-parallel "
                f"size {self.dp}"
            )
        self.bf16 = cfg.train.precision == "bf16" or (
            cfg.train.precision == "auto" and self.dist.device.type == "cuda"
        )

        self.tokenizer = Tokenizer(cfg.data.tokenizer_dir)
        self.vocab_size = cfg.model.vocab_size or self.tokenizer.vocab_size
        if self.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(
                f"model.vocab_size={self.vocab_size} is smaller than the vocabulary of the tokenizer "
                f"{cfg.data.tokenizer_dir} ({self.tokenizer.vocab_size}); set model.vocab_size=null to take "
                "it from the tokenizer"
            )
        dp_rank = parallel_state.get_data_parallel_rank()
        data_root = Path(cfg.data.dir)
        self.train_data = ShardLoader(
            data_root / "train",
            cfg.data.seq_len,
            cfg.train.micro_batch_size,
            dp_rank,
            self.dp,
            seed=cfg.train.seed,
            tokenizer_sha256=self.tokenizer.sha256,
        )
        self.dataset_sha256 = manifest_digest(self.train_data.split.manifest)
        self.valid_dir = data_root / "valid"
        self.step = 0
        self.nonfinite_streak = 0
        self.skipped_updates = 0
        self.stop_signal = 0
        self.ckpt_dir = self.run_dir / "checkpoints"
        resume = self._resume_point(allow_config_change)  # refused before the model is built

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        seed_model_parallel_rng(cfg.train.seed)
        model = build_model(cfg, self.vocab_size)
        padded = padded_vocab_size(self.vocab_size, cfg.model, 1)
        self.num_params = count_parameters(cfg.model, padded, cfg.ssa.output_gate)  # the whole model, for MFU
        self.engine = parallelize(cfg, model, self.dp, self.bf16)
        self.model = self.engine.module
        self._prepare_run_dir(resume)
        self.logger = MetricsLogger(self.run_dir, cfg, cfg.train.steps, self.step, enabled=self.is_main)
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    # ---------------------------------------------------------------- setup

    def _meta(self) -> dict[str, Any]:
        return {
            "config": self.cfg.model_dump(mode="json"),
            "tokenizer_sha256": self.tokenizer.sha256,
            "vocab_size": self.vocab_size,
            "world_size": self.dist.world_size,
            "data": self.train_data.state_dict(),
            "dataset_sha256": self.dataset_sha256,
            "skipped_updates": self.skipped_updates,
        }

    def _resume_point(self, allow_config_change: bool) -> tuple[Path, dict[str, Any], dict] | None:
        """(checkpoint, its metadata, the config changes to apply) to resume from, checked; None for a new
        run."""
        latest = checkpoint.latest_checkpoint(self.ckpt_dir)
        if latest is None:
            return None
        meta = checkpoint.read_meta(latest)
        changes = checkpoint.check_resumable(
            latest, meta, self.cfg, self.tokenizer.sha256, self.dataset_sha256, allow_config_change
        )
        return latest, meta, changes

    def _prepare_run_dir(self, resume: tuple[Path, dict[str, Any], dict] | None) -> None:
        """Resume from the checkpoint found by `_resume_point`, or start the run directory; save the resolved
        config (and, when it changed on resume, record the changes)."""
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if dist.is_initialized():
            dist.barrier()
        changes: dict = {}
        if resume is not None:
            latest, meta, changes = resume
            checkpoint.load(self.engine, latest)
            self.train_data.load_state_dict(meta["data"])
            self.step = meta["step"]
            self.skipped_updates = meta.get("skipped_updates", 0)
            if changes:  # the checkpoint carries the old hyper-parameters; apply the config's
                engine = self.engine
                apply_hyperparameters(engine.optimizer, engine.lr_scheduler, self.cfg.train, self.step)
        if self.is_main:
            if changes:
                diff = {key: {"from": old, "to": new} for key, (old, new) in changes.items()}
                with (self.run_dir / "config-changes.jsonl").open("a") as f:
                    f.write(json.dumps({"step": self.step, "changes": diff}) + "\n")
                print(f"resuming at step {self.step} with changes: {', '.join(changes)}", file=sys.stderr)
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
            save_resolved_config(self.run_dir, self.cfg)
            self._copy_tokenizer()
            self._write_status("running")

    def _copy_tokenizer(self) -> None:
        """`RUN_DIR/tokenizer/`: a self-contained run for export and evaluation (copied once, atomically)."""
        target = self.run_dir / "tokenizer"
        if not target.exists():
            tmp = self.run_dir / ".tokenizer.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.cfg.data.tokenizer_dir, tmp)
            os.replace(tmp, target)

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum  # acted on at the next step boundary

    def _write_status(self, state: str, **extra: Any) -> None:
        status = {"state": state, "step": self.step, "steps": self.cfg.train.steps, **extra}
        write_atomically(self.run_dir / "status.json", json.dumps(status))

    # ---------------------------------------------------------------- the loop

    def train(self) -> None:
        """Step until `train.steps` or a stop signal; validate and save on their intervals and at the end.
        Any fatal error leaves `status.json` failed with its reason."""
        try:
            self._train()
        except BaseException as err:
            if self.is_main:
                self._write_status("failed", reason=str(err) or type(err).__name__)
            raise

    def _train(self) -> None:
        train = self.cfg.train
        while self.step < train.steps:
            metrics = self.train_step()
            self.step += 1
            if self.step % train.eval_interval == 0 or self.step == train.steps:
                metrics.update(self.validate())
            if self.step % train.log_interval == 0 or "val_loss_full" in metrics or self.step == train.steps:
                self.logger.log(metrics)
                if self.is_main:
                    self._write_status("running")
            stopping = self._agree_to_stop()
            if self.step % train.save_interval == 0 or self.step == train.steps or stopping:
                self.save()
            if stopping:
                self._stop_by_signal()
                return
        if self.is_main:
            self._write_status("completed")

    def train_step(self) -> dict[str, Any]:
        """One optimizer step of `grad_accum` micro-steps; returns its metrics."""
        start = time.perf_counter()
        AttachAuxLoss.set_grad_scale(1.0 / self.grad_accum)
        self.model.train()
        ce_sum = torch.zeros((), device=self.dist.device)  # summed on the device: no sync per micro-step
        align_sum = torch.zeros((), device=self.dist.device)
        modes: list[Mode] = []
        inject = self.step + 1 in self.cfg.debug.inject_nonfinite_at and self.cfg.debug.inject_nonfinite_into
        for micro in range(self.grad_accum):
            mode = choose_mode(self.cfg.ssa, self.cfg.train.seed, self.step, micro, self.grad_accum)
            set_attention_mode(self.model, mode)
            ce = self._cross_entropy(next(self.train_data))
            if inject == "loss":
                ce = ce * float("nan")
            elif inject == "gradients":
                ce = NaNGradient.apply(ce)
            self.engine.backward(ce)
            self.engine.step()
            ce_sum += ce.detach()
            align = alignment_per_layer(self.model)
            if align is not None:
                align_sum += align.mean()
            modes.append(mode)

        if inject == "weights":
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("nan")
        ce, align = self._mean_over_ranks(ce_sum / self.grad_accum, align_sum / self.grad_accum)
        grad_norm = float(self.engine.get_global_grad_norm() or 0.0)
        applied = self.engine.was_step_applied() and math.isfinite(ce) and math.isfinite(grad_norm)
        self._count_nonfinite(applied)
        elapsed = time.perf_counter() - start
        ssa = self.cfg.ssa
        tokens_per_step = self.cfg.train.global_batch_size * self.cfg.data.seq_len
        metrics: dict[str, Any] = {
            "step": self.step + 1,
            "loss": ce + ssa.alpha * (ssa.w_fs + ssa.w_sf) * align,
            "ce": ce,
            "align": align,
            "mode": modes[0] if len(set(modes)) == 1 else "mixed",
            "full_micro_steps": modes.count("full"),
            "lr": self.engine.get_lr()[0],
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_step / elapsed,
            "step_time_s": elapsed,
            "peak_mem_gib": peak_memory_gib(self.dist.device),
            "skipped_updates": self.skipped_updates,
        }
        peak = peak_flops(self.dist.device)
        if peak:
            flops_per_gpu = (
                flops_per_token(self.cfg, self.num_params) * tokens_per_step / self.dist.world_size
            )
            metrics["mfu"] = flops_per_gpu / elapsed / peak
        return metrics

    def _cross_entropy(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of a `[batch, seq_len + 1]` token batch (inputs / labels shifted)."""
        tokens = tokens.to(self.dist.device, non_blocking=True)
        inputs, labels = context_parallel_share(tokens[:, :-1], tokens[:, 1:])  # this CP rank's share
        return self.engine(inputs, None, None, labels=labels).float().mean()

    def _mean_over_ranks(self, *values: torch.Tensor) -> list[float]:
        """Mean over all ranks. Right for CE (identical across TP ranks, equal token counts elsewhere) and for
        the alignment loss (each TP rank holds an equal share of the heads)."""
        stacked = torch.stack(values).float().to(self.dist.device)
        if dist.is_initialized():
            dist.all_reduce(stacked)
        return (stacked / self.dist.world_size).tolist()

    def _count_nonfinite(self, applied: bool) -> None:
        if applied:
            self.nonfinite_streak = 0
            return
        self.nonfinite_streak += 1
        self.skipped_updates += 1
        if self.nonfinite_streak >= self.cfg.train.max_nonfinite:
            last = checkpoint.latest_checkpoint(self.ckpt_dir)
            raise TrainingError(
                f"{self.nonfinite_streak} consecutive non-finite losses at step {self.step + 1}; stopping. "
                f"The last good checkpoint is {last or 'none (no checkpoint was written yet)'}. "
                "Lower train.lr, raise train.warmup_fraction or check the data."
            )

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation cross-entropy in both inference modes, over the same fixed batches."""
        self.model.eval()
        out = {}
        for mode in ("full", "sparse"):
            set_attention_mode(self.model, mode)
            total = torch.zeros((), device=self.dist.device)
            batches = iter_validation(
                self.valid_dir,
                self.cfg.data.seq_len,
                self.cfg.train.micro_batch_size,
                self.cfg.train.eval_batches // self.dp,
                parallel_state.get_data_parallel_rank(),
                self.dp,
            )
            count = 0
            for tokens in batches:
                total += self._cross_entropy(tokens)
                count += 1
            (out[f"val_loss_{mode}"],) = self._mean_over_ranks(total / count)
        self.model.train()
        return out

    def _agree_to_stop(self) -> bool:
        """A signal reaches some ranks only; every rank must take the same decision. A signal whose handler
        runs while the ranks agree stays pending for the next step boundary: the agreed answer only ever
        sets the flag, never clears it."""
        flag = torch.tensor([self.stop_signal], device=self.dist.device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        agreed = int(flag.item())
        if agreed:
            self.stop_signal = agreed
        return agreed != 0

    def save(self) -> None:
        """Checkpoint the step, only from finite weights (so the latest checkpoint is always a good one)."""
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        flag = finite.to(self.dist.device, torch.int32).reshape(1)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if not flag.item():
            last = checkpoint.latest_checkpoint(self.ckpt_dir)
            raise TrainingError(
                f"the weights are non-finite after step {self.step}; they are not saved. The last good "
                f"checkpoint is {last or 'none (no checkpoint was written yet)'}. Lower train.lr or check "
                "the data."
            )
        checkpoint.save(self.engine, self.ckpt_dir, self.step, self._meta(), self.cfg.train.keep_last)

    def _stop_by_signal(self) -> None:
        name = signal.Signals(self.stop_signal).name
        if self.is_main:
            self._write_status("stopped", signal=name)
            self.logger.console.print(
                f"{name}: saved step {self.step} to {self.ckpt_dir}; resume with the same command"
            )

    def close(self) -> None:
        self.logger.close()
        shutdown()
