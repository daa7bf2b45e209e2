"""The Megatron-Core GPT with SSA attention (spec, core attention, alignment loss, mode schedule)."""

from ssa_pretrain.model.gpt import alignment_per_layer, build_model, count_parameters, set_attention_mode
from ssa_pretrain.model.modes import choose_mode

__all__ = ["alignment_per_layer", "build_model", "choose_mode", "count_parameters", "set_attention_mode"]
