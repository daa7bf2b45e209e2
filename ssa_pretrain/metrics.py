"""Metrics: one JSON object per line in `RUN_DIR/metrics.jsonl`, wandb (offline unless configured, optional),
and a console line per log step with a progress bar when the console is a terminal. Rank 0 only.

Also the FLOP count behind MFU (`flops_per_token`) and peak memory.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ssa_pretrain.config import Config, dump_config
from ssa_pretrain.files import write_atomically
from ssa_pretrain.quiet import WANDB_SETTINGS

# Dense bf16 peak of known accelerators (FLOP/s), for MFU. Unknown devices (and CPUs) report no MFU.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "GH200": 989e12,
    "B200": 2250e12,
}


def flops_per_token(cfg: Config, num_params: int) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward).

    6 * N for the weights (N = all parameters, the tied output projection counted once as in N), plus
    per layer 12 * heads * head_dim * ctx for the attention scores and weighted sum, where `ctx` is
    the mean number of keys a query sees: seq_len / 2 for causal full attention, and for the sparse branch
    min(block_count * block_size, seq_len / 2). SSA training runs both branches every micro-step (the
    counterpart only for the alignment loss), plus the selection scores q . kbar (forward only:
    2 * heads * head_dim * seq_len / (2 * block_size) per token and layer).
    """
    model, ssa, seq_len = cfg.model, cfg.ssa, cfg.data.seq_len
    per_ctx = 12 * model.num_attention_heads * model.kv_channels * model.num_layers
    full_ctx = seq_len / 2
    sparse_ctx = min(ssa.block_count * ssa.block_size, seq_len / 2)
    selection = (
        2 * model.num_attention_heads * model.kv_channels * model.num_layers * seq_len / (2 * ssa.block_size)
    )
    attention = {
        "full": per_ctx * full_ctx,
        "sparse": per_ctx * sparse_ctx + selection,
        "ssa": per_ctx * (full_ctx + sparse_ctx) + selection,
    }[ssa.variant]
    return 6 * num_params + attention


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 FLOP/s of this GPU if known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become strings so the line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _step_of(line: str) -> int | None:
    """The step of a metrics line; None for a line a killed run left half-written."""
    try:
        return json.loads(line).get("step")
    except json.JSONDecodeError:
        return None


def truncate_metrics(path: Path, after_step: int) -> None:
    """Keep the complete lines of steps up to `after_step` (a run that died after its last checkpoint logged
    later steps, and possibly half a line)."""
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines() if (_step_of(line) or after_step + 1) <= after_step
    ]
    write_atomically(path, "".join(line + "\n" for line in kept))


def progress_bar(console: Console) -> Progress:
    """The live bar: steps done of the total and the time left.

    The bar moves at log steps only, so rich's default 30-second window for its speed estimate would often
    hold a single sample (no ETA) when ten steps take longer than that; here the estimate is the mean speed
    since the first log step, shown from the second one on.
    """
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        speed_estimate_period=math.inf,
    )


class MetricsLogger:
    """Writes metrics from rank 0; a no-op on other ranks."""

    def __init__(self, run_dir: Path, cfg: Config, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.console = Console(stderr=False)
        self.wandb = None
        self.progress: Progress | None = None
        if not enabled:
            return
        if cfg.logging.wandb != "disabled":
            self.wandb = self._start_wandb(run_dir, cfg)
        if cfg.logging.progress and self.console.is_terminal:
            self.progress = progress_bar(self.console)
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step)
            self.progress.start()

    def _start_wandb(self, run_dir: Path, cfg: Config):
        """A wandb run without wandb's own console output; one line of ours says where it goes."""
        try:
            import wandb
        except ImportError:
            warnings.warn("wandb is not installed: metrics go to metrics.jsonl only", stacklevel=2)
            return None
        run = wandb.init(
            project=cfg.logging.project,
            name=cfg.logging.name or run_dir.name,
            dir=str(run_dir),
            mode=cfg.logging.wandb,
            config=cfg.model_dump(mode="json"),
            resume="allow",
            id=run_dir.name,
            settings=wandb.Settings(**WANDB_SETTINGS),
        )
        where = run.url if cfg.logging.wandb == "online" else run.settings.sync_dir
        hint = "" if cfg.logging.wandb == "online" else f" (upload: wandb sync {where})"
        self.console.print(f"wandb {cfg.logging.wandb}: {where}{hint}", highlight=False, soft_wrap=True)
        return run

    def log(self, metrics: dict[str, Any]) -> None:
        """One JSON line (flushed at once), one wandb point, one console line."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in metrics.items()}) + "\n")
        if self.wandb is not None:
            self.wandb.log(
                {k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=metrics["step"]
            )
        self.console.print(self._line(metrics), highlight=False, soft_wrap=True)  # one line per step
        if self.progress is not None:
            self.progress.update(self.task, completed=metrics["step"])

    @staticmethod
    def _line(metrics: dict[str, Any]) -> str:
        parts = []
        for key, value in metrics.items():
            if isinstance(value, float):
                value = f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
            parts.append(f"{key} {value}")
        return " | ".join(parts)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.wandb is not None:
            self.wandb.finish()
        sys.stdout.flush()


def save_resolved_config(run_dir: Path, cfg: Config) -> None:
    """`RUN_DIR/config.yaml`: the exact config this run uses."""
    write_atomically(run_dir / "config.yaml", dump_config(cfg))
