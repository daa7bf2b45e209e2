"""Context parallelism for SSA attention: the load-balanced sequence layout, collectives with tested autograd,
and ring attention serving the full and the sparse branch (`DESIGN.md`, "Parallelism").

Ops tier: these functions take `[batch, seq, heads, dim]` tensors of one rank and a process group; the model
and the trainer call them (see `context.py` for the ring, `layout.py` for how to split a batch).
"""

from .collectives import Ring, all_gather, all_gather_nograd, group_rank_size
from .context import (
    CP_COMM,
    context_parallel_full_attention,
    context_parallel_select_blocks,
    context_parallel_sparse_attention,
    context_parallel_ssa_attention,
)
from .layout import (
    check_cp_seq_len,
    chunk_ids,
    gather_sequence,
    global_positions,
    split_sequence,
    unsplit_sequence,
)

__all__ = [
    "CP_COMM",
    "Ring",
    "all_gather",
    "all_gather_nograd",
    "check_cp_seq_len",
    "chunk_ids",
    "context_parallel_full_attention",
    "context_parallel_select_blocks",
    "context_parallel_sparse_attention",
    "context_parallel_ssa_attention",
    "gather_sequence",
    "global_positions",
    "group_rank_size",
    "split_sequence",
    "unsplit_sequence",
]
