"""AdamW with decoupled weight decay on matrices only, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from ssa_pretrain.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices; none on norms and other 1-D parameters (the usual LLM recipe)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """torch AdamW (fused on CUDA); DeepSpeed wraps it in its ZeRO optimizer."""
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=train.lr,
        betas=(train.beta1, train.beta2),
        eps=train.eps,
        fused=torch.cuda.is_available(),
    )


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then cosine from `lr` to `min_lr`."""
    warmup = round(train.warmup_fraction * train.steps)
    if step < warmup:
        return train.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, train.steps - warmup))
    return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_at` as a LambdaLR (its state, the step count, is saved with the checkpoint)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, train) / train.lr)


def apply_hyperparameters(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    train: TrainConfig,
    step: int,
) -> None:
    """Put `train`'s AdamW settings and schedule on an optimizer restored at `step` (its checkpoint carries
    the old ones): a config change on resume takes effect deliberately instead of being ignored. Groups as
    in `param_groups`: decayed first."""
    scheduler.base_lrs = [train.lr] * len(optimizer.param_groups)
    for group, weight_decay in zip(optimizer.param_groups, (train.weight_decay, 0.0), strict=True):
        group.update(
            initial_lr=train.lr,
            lr=train.lr * scheduler.lr_lambdas[0](step),
            betas=(train.beta1, train.beta2),
            eps=train.eps,
            weight_decay=weight_decay,
        )
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
