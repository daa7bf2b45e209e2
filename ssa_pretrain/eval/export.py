"""The model under evaluation: the Hugging Face directory written by `ssa convert`, loaded as users load it.

* Loading: `trust_remote_code=True` (the export's own modeling code); RoPE scaling (lengths beyond training)
  goes in as `rope_parameters` at load time and is run by transformers' `LlamaRotaryEmbedding`, which the
  export uses.
* Modes: the attention mode, the sparse budget and the layers that run sparse are switched through
  `model.config`, which every forward reads (`set_mode`).
* Internals: the export's `SSAAttention.probe` shows an evaluation each layer's post-RoPE queries and keys
  (`probing`); the export's own `block_means` / `select_blocks` then say what sparse mode would pick.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ssa_pretrain.eval.errors import EvalError
from ssa_pretrain.eval.options import LoadOptions


def rope_parameters(config: dict, load: LoadOptions) -> dict | None:
    """`rope_parameters` for `from_pretrained` from `--rope-scaling/--rope-factor` (None: the export's own).

    The original context is the export's `max_position_embeddings` (the training sequence length); llama3
    takes Llama 3.1's low/high frequency factors 1 and 4. `load` is checked (`LoadOptions.check`).
    """
    if load.rope_scaling is None:
        return None
    theta = config.get("rope_parameters", {}).get("rope_theta", config.get("rope_theta", 10000.0))
    params = {"rope_type": load.rope_scaling, "rope_theta": theta, "factor": float(load.rope_factor)}
    if load.rope_scaling == "llama3":
        params |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    if load.rope_scaling != "linear":
        params["original_max_position_embeddings"] = int(config["max_position_embeddings"])
    return params


def load_model(hf_dir: str | Path, load: LoadOptions) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer) of an export; `EvalError` when `hf_dir` is not one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(hf_dir)
    if not path.is_dir():
        raise EvalError(f"{path}: no such model directory; pass the OUT_DIR written by `ssa convert`")
    if not (path / "config.json").is_file() or not (path / "modeling_ssa.py").is_file():
        raise EvalError(
            f"{path}: not an SSA Hugging Face export (no config.json and modeling_ssa.py); "
            "write one with `ssa convert RUN_DIR OUT_DIR`"
        )
    rope = rope_parameters(json.loads((path / "config.json").read_text()), load)
    kwargs: dict = {"trust_remote_code": True, "dtype": getattr(torch, load.dtype)}
    if rope is not None:
        kwargs["rope_parameters"] = rope  # max_position_embeddings stays the training length
    device = load.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=True)


def attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The export's `SSAAttention` of every layer, in order; `EvalError` when its code has no probes."""
    layers = [layer.self_attn for layer in model.model.layers]
    if not all(hasattr(attention, "probe") for attention in layers):
        raise EvalError(
            f"{sys.modules[type(model).__module__].__file__}: the export's modeling code has no layer probes "
            "(SSAAttention.probe) nor sparse_layers; re-export it with `ssa convert`"
        )
    return layers


def set_mode(
    model: torch.nn.Module, mode: str, block_count: int | None = None, sparse_layers: list[int] | None = None
) -> None:
    """Switch the export's inference mode in place (every forward reads `model.config`); `block_count`: the
    sparse budget (None: as it is); `sparse_layers`: in sparse mode only these layers (None: all)."""
    if sparse_layers is not None:
        attention_layers(model)  # the export's code reads sparse_layers
    model.config.inference_mode = mode
    if block_count is not None:
        model.config.block_count = block_count
    model.config.sparse_layers = sparse_layers


def modeling_module(model: torch.nn.Module) -> ModuleType:
    """The export's `modeling_ssa` module (transformers loaded it from the model directory), whose
    `block_means` and `select_blocks` an evaluation calls as the export's forward does."""
    return sys.modules[type(model).__module__]


@contextlib.contextmanager
def probing(model: torch.nn.Module, probe: Callable[..., None]) -> Iterator[None]:
    """Call `probe(layer, q, k, v, q_pos, k_pos)` in every attention layer of every forward in the block.

    q `[B, T, HQ, D]` and k `[B, S, HKV, D]` post-RoPE, v `[B, S, HKV, D]`, positions `q_pos [B, T]`,
    `k_pos [B, S]` (the export's `SSAAttention.probe`); the layers' probes are removed on exit.
    """
    layers = attention_layers(model)
    for index, attention in enumerate(layers):
        attention.probe = functools.partial(probe, index)
    try:
        yield
    finally:
        for attention in layers:
            attention.probe = None
