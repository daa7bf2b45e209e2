"""Every shim that lets Megatron-Core run on CPU (gloo), in one place. Nothing here acts when CUDA is present.

Megatron-Core assumes CUDA in a few spots that our model reaches. On a machine without CUDA, `install()`:

1. makes `torch.cuda.current_device()` return the CPU device — Megatron places many tensors
   (e.g. RoPE's `inv_freq`) on `torch.cuda.current_device()`;
2. selects DeepSpeed's CPU accelerator (`DS_ACCELERATOR=cpu`, before DeepSpeed is imported);
3. replaces the CUDA RNG-state tracker with one that forks the CPU generator, and the CUDA RNG
   get/set used by activation recomputation with the CPU generator's, so `tensor_parallel.checkpoint`
   (recompute) restores the same random state on CPU;
4. replaces `get_pos_emb_on_this_cp_rank` (RoPE under context parallelism: it pins memory and calls
   `.cuda()`) with the same load-balanced slice taken on the tensor's own device.

`CPU_CONFIG` lists the TransformerConfig flags that need CUDA-only fused kernels (apex / TE / JIT CUDA);
`build_model` turns them off on CPU. Not needed: Megatron's CUDA causal mask (`get_default_causal_mask`)
is only used by its own `DotProductAttention`, which SSA replaces. Sequence parallelism needs no shim: its
norms are our own (`model/norm.py`) and gloo has the all-gather / reduce-scatter it uses. docs/DEVELOPMENT.md
records all of this.
"""

from __future__ import annotations

import contextlib
import os

import torch
from megatron.core.models.common.embeddings import rope_utils, rotary_pos_embedding
from megatron.core.tensor_parallel import random as mc_random

CPU_CONFIG = dict(
    masked_softmax_fusion=False,
    bias_activation_fusion=False,
    bias_dropout_fusion=False,
    apply_rope_fusion=False,
    gradient_accumulation_fusion=False,
    persist_layer_norm=False,
)


class CpuRNGStatesTracker(mc_random.CudaRNGStatesTracker):
    """Megatron's named RNG-state tracker, on the CPU generator."""

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_ or name in self.states_:
            raise ValueError(f"RNG state {name!r} / seed {seed} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = mc_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise ValueError(f"RNG state {name!r} is not added")
        saved = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)


def _pos_emb_on_this_cp_rank(pos_emb: torch.Tensor, seq_dim: int, cp_group) -> torch.Tensor:
    """Megatron's RoPE slice for this CP rank (chunks r and 2cp-1-r), without pinned memory or `.cuda()`."""
    from ssa_pretrain.parallel.layout import split_sequence

    return split_sequence(pos_emb, cp_group.rank(), cp_group.size(), dim=seq_dim)


def install() -> None:
    """Apply the CPU shims once; a no-op where CUDA is available."""
    if torch.cuda.is_available() or getattr(install, "done", False):
        return
    torch.cuda.current_device = lambda: torch.device("cpu")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    mc_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mc_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    mc_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mc_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    rope_utils.get_pos_emb_on_this_cp_rank = _pos_emb_on_this_cp_rank
    rotary_pos_embedding.get_pos_emb_on_this_cp_rank = _pos_emb_on_this_cp_rank  # its imported copy
    install.done = True
