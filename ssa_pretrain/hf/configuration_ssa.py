"""Hugging Face config of an SSA (Sparse Sparse Attention) causal LM.

Copied into every export next to `modeling_ssa.py` and loaded with `trust_remote_code=True`: it imports
nothing but transformers. The decoder is Llama's (RMSNorm, SwiGLU, rotate-half RoPE, GQA, no biases,
tied embeddings); SSA adds the sparse attention budget and a per-head sigmoid output gate.

`inference_mode`, `block_size`, `block_count` and `sparse_layers` may be changed at load time
(`from_pretrained(dir, trust_remote_code=True, inference_mode="sparse", block_count=8)`) or later through
`model.config`: every forward reads them. Every assignment is checked (transformers sets load-time overrides
after `__init__`), so a bad value fails there with the field named, not at the first forward.

`inference_mode="elastic"` runs each key/value head of each sequence in the mode that a per-layer router
(Elastic Attention) picks from the prompt; `router` holds the router's shape (`ssa elastic train` writes it
with the router's weights). An export without a router runs `full` or `sparse` only.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import PretrainedConfig

INFERENCE_MODES = ("full", "sparse", "elastic")
ROUTER_FIELDS = {"pool_tokens", "hidden_multiple"}
POSITIVE_INTS = ("block_size", "block_count", "attention_chunk_size")


class SSAConfig(PretrainedConfig):
    """A Llama-style decoder whose attention is full or block-sparse (SSA) at inference time."""

    model_type = "ssa"
    # the cache output under its name in every supported transformers version (see modeling_ssa.CACHE_ARG)
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 2048,
        intermediate_size: int = 8192,
        num_hidden_layers: int = 16,
        num_attention_heads: int = 32,
        num_key_value_heads: int = 2,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 8192,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 500000.0,
        rope_parameters: dict | None = None,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        output_gate: bool = True,
        inference_mode: str = "full",
        block_size: int = 16,
        block_count: int = 16,
        attention_chunk_size: int = 256,
        router: dict | None = None,
        sparse_layers: list[int] | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        pad_token_id: int | None = 3,
        **kwargs,
    ):
        """Defaults are the released 1B SSA model's; `attention_chunk_size` bounds the query positions
        scored at once (peak memory `[batch, chunk, heads, keys]` fp32); `router`: `{"pool_tokens": P,
        "hidden_multiple": M}` of the elastic router (None: no router); `sparse_layers`: the layers that run
        sparse in `sparse` mode, the others full (None: every layer)."""
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.rope_parameters = rope_parameters or {"rope_type": "default", "rope_theta": rope_theta}
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.mlp_bias = False  # read by LlamaMLP
        self.attention_bias = False
        self.output_gate = output_gate
        self.inference_mode = inference_mode
        self.block_size = block_size
        self.block_count = block_count
        self.attention_chunk_size = attention_chunk_size
        self.router = router
        self.sparse_layers = sparse_layers
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads={self.num_key_value_heads} must divide "
                f"num_attention_heads={self.num_attention_heads}"
            )

    def __setattr__(self, name: str, value) -> None:
        """Refuse an attention setting the model cannot run: ValueError naming the field and its values."""
        if name == "inference_mode" and value not in INFERENCE_MODES:
            raise ValueError(f"inference_mode must be one of {INFERENCE_MODES}, got {value!r}")
        if name in POSITIVE_INTS and not _positive_int(value):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (
            name == "router"
            and value is not None
            and not (
                isinstance(value, dict)
                and set(value) == ROUTER_FIELDS
                and all(map(_positive_int, value.values()))
            )
        ):
            raise ValueError(
                f"router must be None or a dict of positive ints {sorted(ROUTER_FIELDS)}, got {value!r}"
            )
        if name == "sparse_layers" and value is not None:
            layers = getattr(self, "num_hidden_layers", None)
            if not (
                isinstance(value, list | tuple)
                and all(_layer_index(i, layers) for i in value)
                and len(set(value)) == len(value)
            ):
                raise ValueError(
                    f"sparse_layers must be None or a list of distinct layer indices in [0, {layers}), "
                    f"got {value!r}"
                )
            value = list(value)
        super().__setattr__(name, value)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _layer_index(value, num_layers: int | None) -> bool:
    """An int in [0, num_layers) (any int >= 0 while the number of layers is not set)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return False
    return num_layers is None or value < num_layers


__all__ = ["SSAConfig"]
