"""ssa_kernels: the attention ops of SSA (Sparse Sparse Attention).

Every op takes `[batch, seq, heads, dim]` tensors and has a plain-PyTorch reference (`naive_*`, the CPU path
and the test oracle); the op's public function is where a device-specific kernel gets chosen.
"""

from .full_attention import full_attention
from .merge import merge
from .select_blocks import select_blocks, select_blocks_from_means
from .sparse_attention import sparse_attention

__all__ = ["full_attention", "merge", "select_blocks", "select_blocks_from_means", "sparse_attention"]
