"""Full attention on CUDA through PyTorch's fused SDPA kernels, returning the log-sum-exp, with its gradient.

Backends, in order of preference: cuDNN (fp16/bf16; on H100 ≈ 1.5× the flash backend), flash (fp16/bf16,
when cuDNN rejects the shape), memory-efficient (fp32). GQA: k and v are expanded to the query heads (their
gradients are summed back by autograd); the copy is under 1 % of the attention time at the bench shapes.
flash-attn is not used: on Hopper FA2 runs at the flash backend's speed, below cuDNN.

The fused kernels give no gradient through their log-sum-exp, so the autograd function adds it:
`d lse_i / d logit_ij = p_ij`, hence `dq_i += scale * g_i * sum_j p_ij k_j` (attention with values = keys)
and `dk_j += scale * sum_i p_ij g_i q_i` (the value-gradient of that attention for `do_i = scale g_i q_i`).
That costs one more forward and backward, only when the loss depends on `lse`.
"""

from collections.abc import Callable
from typing import Literal

import torch

from ..backends import warn_once

Backend = Literal["cudnn", "flash", "efficient"]


_LSE_NDIM: dict[str, int] = {}  # the lse rank each backend's forward returned (its backward wants the same)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, backend: Backend
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused SDPA call, differentiable in `o` only.

    Args:
        q: `[B, TQ, HQ, D]`; k, v: `[B, TK, HKV, D]`.

    Returns:
        o: `[B, TQ, HQ, D]`; lse: `[B, TQ, HQ]` fp32 (no gradient).
    """
    group = q.shape[2] // k.shape[2]
    if group > 1:  # [B, TK, HKV, D] -> [B, TK, HQ, D]
        k, v = (x.repeat_interleave(group, dim=2) for x in (k, v))
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, T, D] views of the [B, T, H, D] storage
    ops = torch.ops.aten
    if backend == "cudnn":
        o, lse = ops._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, causal, False, scale=scale
        )[:2]
    elif backend == "flash":
        o, lse = ops._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    else:
        o, lse = ops._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal, scale=scale)[
            :2
        ]
    _LSE_NDIM[backend] = lse.ndim  # what its backward is handed back (cuDNN: [B, H, T, 1] where known)
    lse = lse.reshape(lse.shape[0], lse.shape[1], -1)[:, :, : q.shape[2]]  # [B, HQ, TQ]: efficient pads TQ
    return o.transpose(1, 2), lse.transpose(1, 2).float().contiguous()


def _sdpa_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    causal: bool,
    scale: float,
    backend: Backend,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused SDPA backward from a given output and log-sum-exp (as PyTorch's ring attention calls it).

    `o`, `lse` may be the merged result over a superset of these keys: the kernels form
    `p = exp(s − lse)` and `rowsum(do ∘ o)` from them, which gives this key set's share of the gradients.

    Args:
        q, o, do: `[B, TQ, HQ, D]`; k, v: `[B, TK, HKV, D]`; lse: `[B, TQ, HQ]` fp32.

    Returns:
        dq `[B, TQ, HQ, D]`, dk and dv `[B, TK, HKV, D]`, in the input dtype.
    """
    group = q.shape[2] // k.shape[2]
    if group > 1:
        k, v = (x.repeat_interleave(group, dim=2) for x in (k, v))
    q, k, v, o, do = (x.contiguous().transpose(1, 2) for x in (q, k, v, o, do.to(o.dtype)))  # [B, H, T, D]
    num_q, num_k = q.shape[2], k.shape[2]
    lse = lse.float().transpose(1, 2).contiguous()  # [B, HQ, TQ]
    rng = torch.zeros((), dtype=torch.int64, device=q.device)  # philox seed / offset: unused without dropout
    ops = torch.ops.aten
    if backend == "cudnn":
        stats = lse[..., None] if _LSE_NDIM.get(backend, 4) == 4 else lse  # the shape its forward returns
        dq, dk, dv = ops._scaled_dot_product_cudnn_attention_backward(
            do, q, k, v, o, stats, rng, rng, None, None, None, num_q, num_k, 0.0, causal, scale=scale
        )
    elif backend == "flash":
        dq, dk, dv = ops._scaled_dot_product_flash_attention_backward(
            do, q, k, v, o, lse, None, None, num_q, num_k, 0.0, causal, rng, rng, scale=scale
        )
    else:
        padded = torch.nn.functional.pad(lse, (0, -num_q % 32))  # the efficient kernel's lse is padded to 32
        dq, dk, dv, _ = ops._scaled_dot_product_efficient_attention_backward(
            do, q, k, v, None, o, padded, rng, rng, 0.0, [True, True, True, False], causal, scale=scale
        )
    dq, dk, dv = (x.transpose(1, 2) for x in (dq, dk, dv))  # [B, T, H, D]
    if group > 1:  # the expanded heads' gradients summed back onto their kv head
        dk, dv = (x.unflatten(2, (-1, group)).sum(3) for x in (dk, dv))
    return dq, dk, dv


_REJECTED: set[tuple[str, torch.dtype, int]] = set()  # (direction:backend, dtype, head dim) that raised once


def _first_backend(
    call: Callable[[Backend], tuple[torch.Tensor, ...]], q: torch.Tensor, what: str
) -> tuple[tuple[torch.Tensor, ...], Backend]:
    """`call(backend)` on the first backend that accepts the inputs (cuDNN and flash reject some shapes at
    run time); a rejecting backend is remembered per `(what, dtype, head dim)` and not tried again.

    Returns the call's results and the backend used.
    """
    backends: tuple[Backend, ...] = ("efficient",) if q.dtype == torch.float32 else ("cudnn", "flash")
    for backend in backends:
        key = (f"{what}:{backend}", q.dtype, q.shape[-1])
        if key in _REJECTED:
            continue
        try:
            return call(backend), backend
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:
            _REJECTED.add(key)
            warn_once(f"sdpa:{key}", f"{backend} SDPA {what} rejects {tuple(q.shape)}: {error}")
    raise NotImplementedError(f"no fused SDPA {what} takes q {tuple(q.shape)} {q.dtype}")


def _sdpa_any(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor, Backend]:
    """`_sdpa` on the first backend that accepts the inputs: o `[B, TQ, HQ, D]`, lse `[B, TQ, HQ]`, the
    backend used."""
    (o, lse), backend = _first_backend(lambda b: _sdpa(q, k, v, causal, scale, b), q, "forward")
    return o, lse, backend


def sdpa_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused forward with log-sum-exp, recording no graph (the caller differentiates with `sdpa_backward`):
    o `[B, TQ, HQ, D]`, lse `[B, TQ, HQ]` fp32."""
    with torch.no_grad():
        o, lse, _ = _sdpa_any(q, k, v, causal, scale)
    return o, lse


def sdpa_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_sdpa_backward` on the first backend that accepts the inputs: dq, dk, dv (see there)."""
    grads, _ = _first_backend(lambda b: _sdpa_backward(q, k, v, o, lse, do, causal, scale, b), q, "backward")
    return grads  # type: ignore[return-value]


class SDPAFunction(torch.autograd.Function):
    """Fused SDPA with gradients for both `o` and `lse`."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):  # type: ignore[override]
        """q `[B, TQ, HQ, D]`, k/v `[B, TK, HKV, D]` -> o `[B, TQ, HQ, D]`, lse `[B, TQ, HQ]` fp32."""
        with torch.enable_grad():  # record the fused kernel's own backward
            inputs = tuple(x.detach().requires_grad_() for x in (q, k, v))
            o, lse, backend = _sdpa_any(*inputs, causal, scale)
        ctx.inputs, ctx.o = inputs, o
        ctx.causal, ctx.scale, ctx.backend = causal, scale, backend
        ctx.set_materialize_grads(False)
        return o.detach(), lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dlse):  # type: ignore[override]
        """do `[B, TQ, HQ, D]`, dlse `[B, TQ, HQ]` (either may be None) -> dq, dk, dv."""
        q, k, v = ctx.inputs
        grads = [torch.zeros_like(x) for x in (q, k, v)]
        if do is not None:
            grads = list(torch.autograd.grad(ctx.o, (q, k, v), do))
        if dlse is not None:
            keys_as_values = k.detach().requires_grad_()
            with torch.enable_grad():
                o_k, _ = _sdpa(q.detach(), k.detach(), keys_as_values, ctx.causal, ctx.scale, ctx.backend)
            g = dlse.to(q.dtype)[..., None] * ctx.scale  # [B, TQ, HQ, 1]
            (dk_lse,) = torch.autograd.grad(o_k, keys_as_values, g * q.detach())
            grads[0] = grads[0] + g * o_k.detach()
            grads[1] = grads[1] + dk_lse
        ctx.inputs = ctx.o = None
        return *grads, None, None


def sdpa_full_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused twin of `naive_full_attention` on CUDA (same arguments and results; checked by the caller).

    Args:
        q: `[B, TQ, HQ, D]` fp16/bf16/fp32; k, v: `[B, TK, HKV, D]`.

    Returns:
        o: `[B, TQ, HQ, D]` in `q.dtype`; lse: `[B, TQ, HQ]` fp32.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return SDPAFunction.apply(q, k, v, causal, scale)
