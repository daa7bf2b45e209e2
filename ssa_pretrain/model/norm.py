"""RMSNorm for the SSA spec: torch's `RMSNorm`, built the way Megatron builds its norms, usable with sequence
parallelism.

Megatron's local spec uses `WrappedTorchNorm`, which refuses `sequence_parallel`; its sequence-parallel
norms (apex `FusedLayerNorm`, TransformerEngine) are on neither of our machines. The math is the same with
or without sequence parallelism (the norm is per token); what changes is the weight's gradient: each
tensor-parallel rank normalises its own slice of the tokens, so its gradient is a partial sum. Like
Megatron's norms, this one marks its weight `sequence_parallel`;
`parallelize.sum_sequence_parallel_grads` completes such gradients.
"""

from __future__ import annotations

import torch
from megatron.core.transformer import TransformerConfig


class RMSNorm(torch.nn.RMSNorm):
    """`torch.nn.RMSNorm(hidden_size, eps)` with Megatron's norm constructor; the weight carries
    `sequence_parallel = config.sequence_parallel`. State-dict key `weight`, as `WrappedTorchNorm`'s."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__(hidden_size, eps=eps)
        self.weight.sequence_parallel = config.sequence_parallel
