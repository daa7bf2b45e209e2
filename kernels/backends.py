"""Which fast backends this install has, and the one-time notices of the dispatch points.

Triton is optional: a CPU-only install without it keeps every op on its plain-PyTorch reference.
`SSA_KERNELS_REFERENCE=sparse_attention,select_blocks` (op names, or `all`) keeps the named ops on their
references on CUDA too: the way to tell a kernel's numerics from the method's in a real training run.
"""

import os
import warnings

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs: the references serve every op
    triton, tl = None, None
    HAS_TRITON = False

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what the Triton kernels compute in
MAX_TRITON_HEAD_DIM = 256  # register budget of one tile row

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Emit `message` as a UserWarning the first time `key` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def use_triton(op: str, *tensors: torch.Tensor) -> bool:
    """Whether `op` runs its Triton kernel on these tensors.

    True for CUDA tensors (or any tensor under `TRITON_INTERPRET=1`, which runs Triton on the CPU) in fp16,
    bf16 or fp32 with a head dim up to 256, unless `SSA_KERNELS_REFERENCE` names the op. CPU tensors
    otherwise stay on the reference silently; CUDA tensors that the kernel cannot take fall back to the
    reference with a one-time warning naming the reason.
    """
    x = tensors[0]
    forced = os.environ.get("SSA_KERNELS_REFERENCE", "").split(",")
    if op in forced or "all" in forced:
        warn_once(
            f"{op}:forced", f"ssa_kernels.{op}: SSA_KERNELS_REFERENCE is set; using the PyTorch reference"
        )
        return False
    interpret = os.environ.get("TRITON_INTERPRET") == "1"  # read by triton at import, as here
    if x.device.type != "cuda" and not interpret:
        return False
    reason = None
    if not HAS_TRITON:
        reason = "triton is not installed"
    elif x.dtype not in TRITON_DTYPES:
        reason = f"dtype {x.dtype} (the kernel takes fp16, bf16, fp32)"
    elif x.shape[-1] > MAX_TRITON_HEAD_DIM:
        reason = f"head dim {x.shape[-1]} > {MAX_TRITON_HEAD_DIM}"
    if reason is None:
        return True
    warn_once(f"{op}:{reason}", f"ssa_kernels.{op}: {reason}; using the slow PyTorch reference")
    return False
