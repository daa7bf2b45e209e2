"""The export's hooks for evaluation, on a tiny random model (no training): `sparse_layers` makes only the
listed layers sparse in sparse mode and is checked like every attention setting; a layer's probe sees the
post-RoPE queries and the keys that layer attends with, decoding steps included, and changes nothing;
`ssa eval` refuses an export whose code has no probes instead of measuring the wrong thing."""

from __future__ import annotations

import json
import re

import pytest
import torch

from ssa_pretrain.eval.errors import EvalError
from ssa_pretrain.eval.export import probing, set_mode
from ssa_pretrain.hf import modeling_ssa
from ssa_pretrain.hf.configuration_ssa import SSAConfig

BLOCK_SIZE, BLOCK_COUNT, LAYERS = 4, 2, 3
LENGTH = 40  # 10 blocks: K=2 drops blocks in every layer


def tiny_config(**overrides) -> SSAConfig:
    fields = dict(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, block_size=BLOCK_SIZE, block_count=BLOCK_COUNT, initializer_range=0.3,
        output_gate=False, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    return SSAConfig(**{**fields, **overrides})


@pytest.fixture
def model() -> modeling_ssa.SSAForCausalLM:
    torch.manual_seed(0)
    return modeling_ssa.SSAForCausalLM(tiny_config()).eval()


def tokens(length: int) -> torch.Tensor:
    return torch.randint(1, 64, (2, length), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def logits(model, mode: str, sparse_layers=None) -> torch.Tensor:
    set_mode(model, mode, sparse_layers=sparse_layers)
    return model(tokens(LENGTH), use_cache=False).logits


# ----------------------------------------------------------------------------------------- sparse_layers


@pytest.mark.parametrize("chosen", [[1], [0, 2]], ids=["middle", "first-and-last"])
def test_only_the_sparse_layers_run_sparse(model, chosen) -> None:
    """Each layer, run again on the input it got, gives its output in the mode it should have run in only."""
    calls = []
    handles = [
        layer.register_forward_hook(lambda module, args, out: calls.append((module, args, out)))
        for layer in model.model.layers
    ]
    try:
        logits(model, "sparse", chosen)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == LAYERS
    with torch.no_grad():
        for index, (layer, args, out) in enumerate(calls):
            same = {}
            for mode in ("full", "sparse"):
                set_mode(model, mode)
                same[mode] = torch.equal(layer(*args), out)
            assert same == {"sparse": index in chosen, "full": index not in chosen}, index


def test_sparse_layers_listing_all_or_none(model) -> None:
    full, sparse = logits(model, "full"), logits(model, "sparse")
    assert not torch.allclose(full, sparse, atol=1e-3)  # the budget binds
    assert torch.equal(logits(model, "sparse", list(range(LAYERS))), sparse)
    assert torch.equal(logits(model, "sparse", []), full)
    assert torch.equal(logits(model, "full", [0, 1]), full)  # full mode ignores it


BAD = [[LAYERS], [-1], [True], [1, 1], [0.0], "0", 1]


@pytest.mark.parametrize("value", BAD, ids=[repr(v) for v in BAD])
def test_bad_sparse_layers_are_refused_when_set(value, tmp_path) -> None:
    message = re.escape(f"sparse_layers must be None or a list of distinct layer indices in [0, {LAYERS})")
    with pytest.raises(ValueError, match=message):
        tiny_config(sparse_layers=value)
    config = tiny_config(sparse_layers=[0])
    with pytest.raises(ValueError, match=message):
        config.sparse_layers = value
    assert config.sparse_layers == [0]  # unchanged
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        SSAConfig.from_pretrained(tmp_path, sparse_layers=value)


def test_an_export_without_sparse_layers_in_its_config_runs_every_layer_sparse(tmp_path) -> None:
    tiny_config(sparse_layers=(2, 0)).save_pretrained(tmp_path)
    assert SSAConfig.from_pretrained(tmp_path).sparse_layers == [2, 0]
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["sparse_layers"]  # as exports written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert SSAConfig.from_pretrained(tmp_path).sparse_layers is None


# ----------------------------------------------------------------------------------------- probes


def test_probe_sees_what_each_layer_attends_with(model) -> None:
    """Prefill and one decoding step: the probe's q, k, v give the layer's attention output (the input of
    `o_proj`, no output gate here) through the export's own attention, so they are post-RoPE."""
    seen, attended = [], []
    handles = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda module, args: attended.append(args[0]))
        for layer in model.model.layers
    ]
    cfg = model.config
    set_mode(model, "sparse")
    ids = tokens(LENGTH)
    cache = modeling_ssa.CACHE_ARG
    try:
        with torch.no_grad():
            prefill = model(ids, use_cache=True)
            step = model(ids[:, :1], **{cache: getattr(prefill, cache)})
            attended.clear()
            with probing(model, lambda *args: seen.append(args)):
                probed = model(ids, use_cache=True)
                probed_step = model(ids[:, :1], **{cache: getattr(probed, cache)})
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(probed.logits, prefill.logits) and torch.equal(probed_step.logits, step.logits)
    assert [args[0] for args in seen] == [*range(LAYERS), *range(LAYERS)]
    assert all(layer.self_attn.probe is None for layer in model.model.layers)  # removed on exit
    for (layer, q, k, v, q_pos, k_pos), out in zip(seen, attended, strict=True):
        decoding = q.shape[1] == 1
        keys = LENGTH + 1 if decoding else LENGTH
        assert q.shape == (2, 1 if decoding else LENGTH, 4, 16) and k.shape == v.shape == (2, keys, 2, 16)
        assert torch.equal(k_pos, torch.arange(keys).expand(2, -1))
        assert torch.equal(q_pos, k_pos[:, keys - q.shape[1] :])
        kbar = modeling_ssa.block_means(
            k, torch.zeros(2, dtype=torch.long), 0, keys // BLOCK_SIZE, BLOCK_SIZE
        )
        again = modeling_ssa.ssa_attention(
            q, k, v, q_pos, k_pos, kbar, cfg.block_size, cfg.block_count, cfg.attention_chunk_size
        )
        torch.testing.assert_close(again.flatten(2), out, rtol=1e-5, atol=1e-6, msg=f"layer {layer}")


def test_an_export_without_probes_is_refused(model) -> None:
    """Exports written before the probes existed: `ssa eval sparsity` asks for a re-export."""
    del model.model.layers[1].self_attn.probe
    with (
        pytest.raises(EvalError, match=r"no layer probes .* re-export it with `ssa convert`"),
        probing(model, lambda *args: None),
    ):
        pass
    with pytest.raises(EvalError, match="re-export it"):
        set_mode(model, "sparse", sparse_layers=[0])
    assert all(getattr(layer.self_attn, "probe", None) is None for layer in model.model.layers)
