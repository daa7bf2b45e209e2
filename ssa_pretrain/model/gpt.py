"""Build the Megatron-Core GPT with SSA attention from our config, and drive its attention mode.

Requires `megatron.core.parallel_state` to be initialised (see `ssa_pretrain.distributed`) and, on CPU, the
shims installed (`cpu_shims.install()`, which the entry points call). The parallel layout's fields come from
`ssa_pretrain.parallelize`, which also wires a built model into training.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from ssa_pretrain import cpu_shims
from ssa_pretrain.config import Config, ModelConfig
from ssa_pretrain.model import layout
from ssa_pretrain.model.attention import SSACoreAttention, SSATransformerConfig
from ssa_pretrain.model.head import use_fused_cross_entropy
from ssa_pretrain.model.modes import Mode
from ssa_pretrain.model.spec import get_ssa_block_spec
from ssa_pretrain.parallelize import transformer_parallel_config


def padded_vocab_size(vocab_size: int, model: ModelConfig, tp: int) -> int:
    """Megatron's rule: pad the embedding to a multiple of `make_vocab_size_divisible_by * tp`."""
    multiple = model.make_vocab_size_divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def transformer_config(cfg: Config, dtype: torch.dtype) -> SSATransformerConfig:
    """Megatron's TransformerConfig for a Llama-style decoder with SSA attention."""
    model = cfg.model
    fusions = {"bias_activation_fusion": cfg.train.fused_elementwise}
    if not torch.cuda.is_available():
        fusions.update(cpu_shims.CPU_CONFIG)  # their kernels are CUDA-only
    return SSATransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_kv_heads,
        kv_channels=model.kv_channels,
        ffn_hidden_size=model.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_eps,
        gated_linear_unit=True,  # SwiGLU
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_std,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        attention_output_gate=cfg.ssa.output_gate,
        ssa=cfg.ssa,
        **transformer_parallel_config(cfg),  # TP, SP, recompute, CP
        **fusions,
    )


def build_model(
    cfg: Config,
    vocab_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    block_spec: TransformerBlockSubmodules | None = None,
) -> GPTModel:
    """The GPT of `cfg` on this rank's tensor-parallel shard.

    `device` defaults to the current GPU (CPU without CUDA); `"meta"` builds shapes only (parameter counts).
    `block_spec` replaces the SSA decoder spec (`get_ssa_block_spec`), e.g. with a baseline's attention.
    With `train.cross_entropy=fused` the training forward (given labels) returns the fused loss.
    """
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp != cfg.parallel.tp:
        raise ValueError(f"parallel.tp={cfg.parallel.tp} but parallel_state was initialised with tp={tp}")
    device = torch.device(device or (torch.cuda.current_device() if torch.cuda.is_available() else "cpu"))
    with torch.device("meta") if device.type == "meta" else contextlib.nullcontext():
        model = _gpt(cfg, vocab_size, dtype, tp, block_spec or get_ssa_block_spec(cfg.model.num_layers))
    if cfg.train.cross_entropy == "fused":
        use_fused_cross_entropy(model)
    return model.to(device)


def _gpt(
    cfg: Config, vocab_size: int, dtype: torch.dtype, tp: int, block_spec: TransformerBlockSubmodules
) -> GPTModel:
    return GPTModel(
        config=transformer_config(cfg, dtype),
        transformer_layer_spec=block_spec,
        vocab_size=padded_vocab_size(vocab_size, cfg.model, tp),
        max_sequence_length=cfg.data.seq_len,
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.model.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.model.rope_theta,
    )


def ssa_layers(model: torch.nn.Module) -> list[SSACoreAttention]:
    """The SSA core attentions of a model, in layer order."""
    return [m for m in model.modules() if isinstance(m, SSACoreAttention)]


def set_attention_mode(
    model: torch.nn.Module, mode: Mode, block_size: int | None = None, block_count: int | None = None
) -> None:
    """Select the attention that drives the residual stream; optionally change the sparsity budget.

    `block_size` / `block_count` of None restore the configured values.
    """
    if mode not in ("full", "sparse"):
        raise ValueError(f"attention mode must be 'full' or 'sparse', got {mode!r}")
    for layer in ssa_layers(model):
        layer.mode = mode
        layer.block_size = block_size or layer.ssa.block_size
        layer.block_count = block_count or layer.ssa.block_count


def alignment_per_layer(model: torch.nn.Module) -> torch.Tensor | None:
    """D(a_full, a_sparse) of each layer in the last forward (`[num_layers]`), None if not computed."""
    values = [layer.last_alignment for layer in ssa_layers(model)]
    return None if any(v is None for v in values) else torch.stack(values)


def count_parameters(model: ModelConfig, vocab_size: int, output_gate: bool) -> int:
    """Analytic parameter count of the (unsharded) model, from the layout table; `vocab_size` as padded."""
    return sum(math.prod(shape) for shape in layout.shapes(model, vocab_size, output_gate).values())
