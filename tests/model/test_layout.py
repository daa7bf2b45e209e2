"""The weight-layout table describes both models it maps: Megatron's GPT and the HF export."""

from __future__ import annotations

import pytest
import torch

from ssa_pretrain.model import layout
from ssa_pretrain.model.gpt import build_model, padded_vocab_size
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("megatron_world")

VOCAB = 500  # not a multiple of Megatron's padding: the embedding has padding rows


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("gate", [True, False], ids=["gate", "no-gate"])
def test_table_is_the_megatron_state_dict(gate, tied):
    cfg = tiny_config(f"ssa.output_gate={gate}", f"model.tie_embeddings={tied}")
    model = build_model(cfg, VOCAB, device="meta")
    built = {k: tuple(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    assert layout.shapes(cfg.model, padded_vocab_size(VOCAB, cfg.model, 1), gate) == built
    assert all(layout.find(name) is not None for name in built)


def test_find_matches_whole_names_only():
    assert layout.find("decoder.layers.12.mlp.linear_fc1.weight").split == "column_gate_up"
    assert layout.find("decoder.layers.x.mlp.linear_fc1.weight") is None
    assert layout.find("module.decoder.final_layernorm.weight") is None


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_hf_state_dict_is_the_export_model(tied):
    from ssa_pretrain.hf.convert import hf_config
    from ssa_pretrain.hf.modeling_ssa import SSAForCausalLM

    cfg = tiny_config(f"model.tie_embeddings={tied}")
    padded = padded_vocab_size(VOCAB, cfg.model, 1)
    state = {name: torch.randn(shape) for name, shape in layout.shapes(cfg.model, padded, True).items()}
    hf = layout.hf_state_dict(state, cfg.model, True, VOCAB)
    with torch.device("meta"):
        model = SSAForCausalLM(hf_config(cfg, VOCAB, torch.float32))
    assert {k: tuple(v.shape) for k, v in hf.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }
    assert (hf["lm_head.weight"] is hf["model.embed_tokens.weight"]) == tied
    torch.testing.assert_close(
        hf["model.embed_tokens.weight"], state["embedding.word_embeddings.weight"][:VOCAB]
    )
