"""The config of `ssa elastic train`: the model, the router's shape, the task mix, the targets, the schedule.

One YAML file plus dotted overrides, checked like a training config (an unknown key or a bad value exits 2
naming it)::

    ssa elastic train configs/elastic/tiny.yaml model=runs/demo/hf out=runs/demo/hf-elastic train.steps=300
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from ssa_pretrain.config import ConfigError, Section, apply_overrides, describe_errors, read_yaml
from ssa_pretrain.errors import UserError

TAGS = ("sensitive", "robust")


class ElasticError(UserError, ValueError):
    """A backbone that cannot take a router, a task mix that cannot be built, an output in the way."""


class RouterConfig(Section):
    """Elastic Attention's router per layer (written into the export's `router` config)."""

    pool_tokens: int = Field(default=100, ge=1)
    """Prompt tokens pooled at each end (boundary pooling; the paper pools ~100)."""
    hidden_multiple: int = Field(default=4, ge=1)
    """Hidden width of the task and router MLPs in multiples of the head dim (the paper: 4)."""


class TaskDataConfig(Section):
    """The tagged task mix, built from corpus text with the export's tokenizer (nothing is downloaded)."""

    corpus: str | None = None
    """Documents for filler and passages (.jsonl/.txt, optionally .xz/.gz, or a directory); null: the
    corpus bundled with the package."""
    seq_len: int = Field(default=256, ge=32)
    """Tokens per example (every example has exactly this many)."""
    train_examples_per_task: int = Field(default=64, ge=1)
    """Training examples of each task."""
    valid_examples_per_task: int = Field(default=16, ge=1)
    """Held-out examples of each task (other documents and facts), scored after training."""


class RouterTrainConfig(Section):
    """Optimization of the router (the backbone stays frozen) and of the Lagrange multipliers."""

    steps: int = Field(default=300, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(default=8, ge=2)
    """Examples per step, half of each tag (so both targets constrain every step)."""
    lr: float = Field(default=1e-3, gt=0)
    """AdamW learning rate of the router."""
    lambda_lr: float = Field(default=0.5, gt=0)
    """Learning rate of the multipliers λ₁, λ₂ (gradient ascent: the min-max of the Lagrangian)."""
    logit_penalty: float = Field(default=1e-3, ge=0)
    """β of β·mean((SA − FA logit)²), not in the paper: the ascent on a target-1.0 multiplier pushes the
    logits without bound, and past a gap of ~20 the Gumbel-softmax has no gradient left to undo it."""
    tau_init: float = Field(default=1.5, gt=0)
    """Gumbel-softmax temperature at the start."""
    tau_min: float = Field(default=1.0, gt=0)
    """Temperature after the anneal (a cosine from tau_init, as the published code does)."""
    anneal_fraction: float = Field(default=0.6, gt=0, le=1)
    """Share of the steps over which the temperature anneals."""
    seed: int = 0
    """Seed of the router's initialization, the task mix and the Gumbel noise."""
    log_interval: int = Field(default=10, ge=1)
    """Steps between log lines (router_metrics.jsonl gets every step)."""
    device: str | None = None
    """torch device; null: cuda when available, else cpu."""
    dtype: Literal["float32", "bfloat16"] | None = None
    """Backbone dtype; null: bfloat16 on cuda, float32 on cpu. The router trains in float32."""

    def temperature(self, step: int) -> float:
        """Cosine anneal from tau_init to tau_min over the first anneal_fraction of the steps."""
        progress = min(1.0, step / max(1.0, self.anneal_fraction * self.steps))
        return self.tau_min + (self.tau_init - self.tau_min) * 0.5 * (1 + math.cos(math.pi * progress))


class ElasticConfig(Section):
    """`ssa elastic train`: attach a router to a frozen SSA model and train it on the task mix."""

    model: str
    """The backbone: an HF export of `ssa convert`, or a training run / checkpoint (converted first)."""
    out: str
    """The elastic export to write (the backbone's files, the router's weights, inference_mode elastic)."""
    router: RouterConfig = RouterConfig()
    """The router's shape."""
    targets: dict[str, float] = Field(default_factory=lambda: {"sensitive": 0.7, "robust": 1.0})
    """Target share of sparse-attention heads per tag (the paper's: sensitive 0.7, robust 1.0)."""
    data: TaskDataConfig = TaskDataConfig()
    """The task mix."""
    train: RouterTrainConfig = RouterTrainConfig()
    """The schedule."""

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, targets: dict[str, float]) -> dict[str, float]:
        if set(targets) != set(TAGS):
            raise ValueError(f"give a target for each tag {list(TAGS)}, got {sorted(targets)}")
        if not all(0.0 <= t <= 1.0 for t in targets.values()):
            raise ValueError(f"targets are shares of sparse heads in [0, 1], got {targets}")
        return targets


def load_elastic_config(path: str | Path, overrides: list[str] | None = None) -> ElasticConfig:
    """YAML (+ includes) + dotted overrides, validated; `ConfigError` names every bad key."""
    data = apply_overrides(read_yaml(path), overrides or [])
    try:
        return ElasticConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid config\n  {describe_errors(err, ElasticConfig)}") from None
