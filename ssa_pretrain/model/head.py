"""Output projection and cross-entropy in one op, so that the `[tokens, vocab]` logits are never kept.

At the 1B shape (128K vocabulary) Megatron's path keeps bf16 logits and fp32 softmax for backward: 6 bytes x
vocab = 0.75 MB per token, 6 GiB at 8,192 tokens, against ~1 GiB for all 16 layers' attention outputs.
`use_fused_cross_entropy` reroutes a GPT's training forward (the one given `labels`) through
`linear_cross_entropy`: Liger's fused linear cross-entropy on CUDA when `liger-kernel` is installed (chunks of
tokens; the gradients are computed in the forward, nothing is recomputed), else the same chunking in plain
PyTorch (logits recomputed in backward). That forward returns the mean loss over the tokens — all the trainer
uses — rather than Megatron's per-token `[B, S]`: Liger computes its gradients in the forward only for a
mean (or sum), a per-token loss makes it recompute every chunk's logits in backward. Without labels
(evaluation, inference, export) the model returns its logits as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from ssa_kernels.backends import warn_once
from torch.utils.checkpoint import checkpoint

CHUNK_TOKENS = 4096
"""Tokens per chunk of the PyTorch path: 4096 x 128K fp32 logits = 2 GiB transient."""


def _liger():
    """Liger's autograd function on CUDA, or None (not installed; announced once)."""
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
    except ImportError:
        warn_once(
            "liger", "fused cross-entropy: liger-kernel is not installed; chunked PyTorch cross-entropy"
        )
        return None
    return LigerFusedLinearCrossEntropyFunction


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """hidden `[N, H]`, weight `[V, H]`, target `[N]` -> per-token loss `[N]` fp32 (logits in fp32)."""
    return F.cross_entropy((hidden @ weight.t()).float(), target, reduction="none")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the tokens of the logits `hidden @ weight.T`, without keeping them.

    Args:
        hidden: `[B, S, H]` final hidden states; weight: `[V, H]` output projection; labels: `[B, S]`.

    Returns:
        loss: 0-dim fp32, the mean of what Megatron's `compute_language_model_loss` returns per token.
    """
    flat, target = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    liger = _liger() if hidden.is_cuda else None
    if liger is not None:
        # input, weight, target, bias, class weights, ignore index, z-loss, label smoothing, reduction,
        # softcap, z-loss output, fp32 accumulation of the weight gradient (bf16 weights: as autograd's)
        return liger.apply(
            flat, weight, target, None, None, -100, 0.0, 0.0, "mean", None, False, torch.float32
        )[0].float()
    chunks = range(0, flat.shape[0], CHUNK_TOKENS)
    losses = [
        checkpoint(
            _chunk_loss, flat[i : i + CHUNK_TOKENS], weight, target[i : i + CHUNK_TOKENS], use_reentrant=False
        )
        for i in chunks
    ]
    return torch.cat(losses).mean()


def use_fused_cross_entropy(model: torch.nn.Module) -> None:
    """Make `model` (a Megatron `GPTModel`) compute its training loss with `linear_cross_entropy`.

    Given `labels`, the output layer hands its input and weight on instead of computing logits, and the loss
    is computed from them: the forward returns the mean over the tokens of Megatron's per-token loss (0-dim),
    the same up to float rounding. Tensor parallelism is not supported (the vocabulary would be split across
    ranks).
    """
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        raise ValueError("fused cross-entropy needs parallel.tp=1 (the output layer splits the vocabulary)")
    head, forward, deferred = model.output_layer, model.forward, {}
    head_forward = head.forward

    def project(hidden, weight=None, **kwargs):
        if "labels" not in deferred:
            return head_forward(hidden, weight=weight, **kwargs)
        deferred["weight"] = head.weight if weight is None else weight
        return hidden, None  # [S, B, H]: the loss computes the logits

    def loss(labels: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(hidden.transpose(0, 1), deferred.pop("weight"), labels)

    def forward_with_labels(*args, labels=None, **kwargs):
        if labels is not None:
            deferred["labels"] = True
        try:
            return forward(*args, labels=labels, **kwargs)
        finally:
            deferred.clear()

    head.forward, model.forward, model.compute_language_model_loss = project, forward_with_labels, loss
