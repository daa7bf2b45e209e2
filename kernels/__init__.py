"""ssa_kernels: the attention ops of SSA (Sparse Sparse Attention) and its alignment loss.

Every op takes `[batch, seq, heads, dim]` tensors and has a plain-PyTorch reference (`naive_*`, the CPU path
and the test oracle); the op's public function is where a device-specific kernel gets chosen.
"""

from .alignment_loss import alignment_loss, alignment_loss_through
from .full_attention import full_attention
from .merge import merge
from .mixed_attention import mixed_attention, naive_mixed_attention
from .select_blocks import select_blocks, select_blocks_from_means
from .sparse_attention import sparse_attention

__all__ = [
    "alignment_loss",
    "alignment_loss_through",
    "full_attention",
    "merge",
    "mixed_attention",
    "naive_mixed_attention",
    "select_blocks",
    "select_blocks_from_means",
    "sparse_attention",
]
