"""Every Triton kernel compiles for an H100 (sm_90) through Triton's full pipeline (ptxas included), on CPU.

The interpreter tests run the kernels' arithmetic but not the compiler, which rejects some things the
interpreter accepts (a loop-carried variable changing shape, say). Here the real launchers run with CPU
tensors and the launch is replaced by `triton.compile` for sm_90 of exactly the arguments and constants the
launcher passed, so the configurations checked are those the code uses, not a copy of them.
"""

import importlib.util

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

import triton
from ssa_kernels.alignment_loss.parallel import alignment_loss_bwd, alignment_loss_fwd
from ssa_kernels.select_blocks.parallel import select_blocks_fwd
from ssa_kernels.sparse_attention.parallel import sparse_attention_bwd, sparse_attention_fwd
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

POINTER_TYPES = {
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
    torch.float32: "*fp32",
    torch.int32: "*i32",
    torch.int64: "*i64",
}
LAUNCH_OPTIONS = ("num_warps", "num_stages")
H100_SHARED_BYTES = 227 * 1024  # shared memory one H100 block may use


def compile_instead_of_launch(compiled: list[str]):
    """A stand-in for `JITFunction.run`: compile the kernel for sm_90 with the launch's arguments."""

    def run(self: JITFunction, *args, grid, warmup, **kwargs):
        assert not args, f"{self.fn.__name__}: launchers pass keyword arguments only"
        signature, constants = {}, {}
        for param in self.params:
            value = kwargs[param.name]
            if param.is_constexpr or value is None:  # an optional pointer left out is a constexpr None
                signature[param.name], constants[param.name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[param.name] = POINTER_TYPES[value.dtype]
            elif isinstance(value, float):
                signature[param.name] = "fp32"
            else:
                signature[param.name] = "i32" if abs(value) < 2**31 else "i64"
        options = {name: kwargs[name] for name in LAUNCH_OPTIONS if name in kwargs}
        kernel = triton.compile(
            ASTSource(self, signature, constants), target=GPUTarget("cuda", 90, 32), options=options
        )
        assert kernel.metadata.shared <= H100_SHARED_BYTES, f"{self.fn.__name__}: {kernel.metadata.shared} B"
        compiled.append(self.fn.__name__)

    return run


@pytest.mark.parametrize(
    ("dtype", "dim", "group", "with_dlse"),
    [(torch.bfloat16, 64, 16, False), (torch.float32, 128, 2, True)],
    ids=["bf16-d64-g16", "fp32-d128-g2-dlse"],
)
def test_kernels_compile_for_sm90(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, dim: int, group: int, with_dlse: bool
) -> None:
    compiled: list[str] = []
    monkeypatch.setattr(JITFunction, "run", compile_instead_of_launch(compiled))
    batch, seq_len, kv_heads, block_size, block_count = 1, 300, 2, 16, 8
    q = torch.randn(batch, seq_len, kv_heads * group, dim, dtype=dtype)
    k, v = (torch.randn(batch, seq_len, kv_heads, dim, dtype=dtype) for _ in range(2))
    select_blocks_fwd(q, k, block_size, block_count, dim**-0.5)
    indices = torch.randint(
        -1, seq_len // block_size, (batch, seq_len, kv_heads, block_count), dtype=torch.int32
    )
    o, lse = sparse_attention_fwd(q, k, v, indices, block_size, dim**-0.5)
    dlse = torch.randn_like(lse) if with_dlse else None
    sparse_attention_bwd(q, k, v, indices, o, lse, torch.randn_like(o), dlse, block_size, dim**-0.5)
    assert compiled == [
        "block_scores_kernel",
        "top_blocks_kernel",
        "sparse_fwd_kernel",
        "sparse_bwd_dq_kernel",
        "sparse_bwd_dkdv_kernel",
        "sparse_bwd_dkdv_reduce_kernel",
    ]


@pytest.mark.parametrize(
    ("dtype", "weights"),
    [(torch.bfloat16, (1.0, 1.0)), (torch.float16, (0.0, 1.0)), (torch.float32, (2.0, 0.0))],
    ids=["bf16", "fp16-w_fs-zero", "fp32-w_sf-zero"],
)
def test_alignment_kernels_compile_for_sm90(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, weights: tuple[float, float]
) -> None:
    compiled: list[str] = []
    monkeypatch.setattr(JITFunction, "run", compile_instead_of_launch(compiled))
    full, sparse = (torch.randn(1, 300, 4, 64, dtype=dtype) for _ in range(2))
    alignment_loss_fwd(full, sparse)
    alignment_loss_bwd(full, sparse, torch.tensor(1.0), *weights)
    upstream = torch.randn(300, 1, 4, 64, dtype=dtype).transpose(0, 1)  # added in place, strided
    alignment_loss_bwd(full, sparse, torch.tensor(1.0), *weights, upstream, upstream)
    assert compiled == ["alignment_fwd_kernel", "alignment_bwd_kernel", "alignment_bwd_kernel"]
