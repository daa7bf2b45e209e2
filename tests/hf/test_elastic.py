"""The export in elastic mode (Elastic Attention): the routers pick a mode per key/value head from the
prompt; mixed heads equal each head run alone in its mode; decoding keeps the prompt's modes, so greedy
generation with the cache equals uncached forwards with those modes; the straight-through sample passes
gradient to the router and to nothing else. A tiny random model, no training."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from ssa_pretrain.hf import modeling_ssa
from ssa_pretrain.hf.configuration_ssa import SSAConfig

BLOCK_SIZE, BLOCK_COUNT = 4, 2
LAYERS, KV_HEADS = 2, 2
ROUTER = {"pool_tokens": 4, "hidden_multiple": 2}
NEW_TOKENS = 10


def tiny_config(**overrides) -> SSAConfig:
    fields = dict(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=KV_HEADS, block_size=BLOCK_SIZE, block_count=BLOCK_COUNT, initializer_range=0.3,
        bos_token_id=None, eos_token_id=None, pad_token_id=0, router=ROUTER, inference_mode="elastic",
    )  # fmt: skip
    return SSAConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def model() -> modeling_ssa.SSAForCausalLM:
    torch.manual_seed(0)
    return modeling_ssa.SSAForCausalLM(tiny_config()).eval()


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


MIXED = torch.tensor([[[True, False], [False, False]], [[False, True], [True, True]]])  # [L, B=2, HKV]


@pytest.mark.parametrize("modes", ["mixed", "all-full", "all-sparse"])
def test_mixed_heads_equal_each_head_in_its_own_mode(model, modes: str) -> None:
    head_modes = {"mixed": MIXED, "all-full": MIXED & False, "all-sparse": MIXED | True}[modes]
    ids = tokens(2, 29)  # 8 blocks of 4: sparse attention (K=2) drops blocks
    captured: dict[str, list[torch.Tensor]] = {}

    def capture(name):
        def hook(module, args, output):
            captured.setdefault(name, []).append(args[0])  # o_proj's input: [B, T, HQ * D]

        return hook

    with torch.no_grad():
        handles = [
            layer.self_attn.o_proj.register_forward_hook(capture("elastic")) for layer in model.model.layers
        ]
        model(ids, use_cache=False, head_modes=head_modes)
        for h in handles:
            h.remove()
        # the same layer inputs, each head in its own mode alone: recompute every layer's attention per mode
        for mode in ("full", "sparse"):
            handles = [
                layer.self_attn.o_proj.register_forward_hook(capture(mode)) for layer in model.model.layers
            ]
            model.config.inference_mode = mode
            try:
                model(ids, use_cache=False)
            finally:
                model.config.inference_mode = "elastic"
                for h in handles:
                    h.remove()
    # Layer 0 sees the same input in every run: its heads must match their own mode exactly.
    out = captured["elastic"][0].unflatten(-1, (KV_HEADS, -1))  # [B, T, HKV, G * D]
    for b in range(2):
        for h in range(KV_HEADS):
            mode = "sparse" if head_modes[0, b, h] else "full"
            alone = captured[mode][0].unflatten(-1, (KV_HEADS, -1))
            torch.testing.assert_close(out[b, :, h], alone[b, :, h], rtol=0, atol=0)


def test_router_decides_from_the_prompt_and_decoding_keeps_it(model) -> None:
    prompt = tokens(2, 13)
    with torch.no_grad():
        cached = model.generate(
            prompt, max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True,
            output_logits=True,
        )  # fmt: skip
        prefill_modes = torch.stack(model.model.last_head_modes)  # decoding steps reused these
        model(prompt, use_cache=False)
        assert torch.equal(torch.stack(model.model.last_head_modes), prefill_modes)  # the routers' choice
        cache = getattr(cached, modeling_ssa.CACHE_ARG)
        assert isinstance(cache, modeling_ssa.SSACache) and torch.equal(cache.head_modes, prefill_modes)
        # with the prompt's modes fixed, generation without the cache is the same, step by step
        uncached = model.generate(
            prompt, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=False, head_modes=prefill_modes
        )
        assert cached.sequences.tolist() == uncached.tolist()
        once = model(cached.sequences, use_cache=False, head_modes=prefill_modes).logits
    steps = torch.stack(cached.logits, 1)  # [B, NEW_TOKENS, vocab]
    torch.testing.assert_close(steps, once[:, prompt.shape[1] - 1 : -1], rtol=1e-4, atol=1e-4)


def test_router_pools_the_prompt_boundaries(model) -> None:
    router = model.model.layers[0].self_attn.router
    k = torch.randn(2, 12, KV_HEADS, 16)
    pos = torch.arange(12).expand(2, 12).clone()
    pos[1, :3] = -1  # row 1 left-padded: its prompt is 9 tokens
    pos[1, 3:] = torch.arange(9)
    pooled = router.pool(k, pos)
    p = ROUTER["pool_tokens"]
    row0 = torch.cat([k[0, :p], k[0, -p:]]).mean(0)  # first and last 4 of 12
    row1 = torch.cat([k[1, 3 : 3 + p], k[1, -p:]]).mean(0)  # first and last 4 of the 9 real ones
    expected = torch.nn.functional.layer_norm(torch.stack([row0, row1]), (16,))
    torch.testing.assert_close(pooled, expected)


def test_straight_through_sample_trains_the_router_only() -> None:
    torch.manual_seed(0)
    model = modeling_ssa.SSAForCausalLM(tiny_config())
    for name, p in model.named_parameters():
        p.requires_grad_(".router." in name)
    model.train()
    ids = tokens(2, 29)
    out = model(ids, labels=ids, use_cache=False)
    modes = torch.stack(model.model.last_head_modes)
    assert set(modes.unique().tolist()) <= {0.0, 1.0} and modes.requires_grad  # hard samples, soft gradient
    (out.loss + modes.mean()).backward()
    for name, p in model.named_parameters():
        if ".router." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_elastic_mode_refuses_what_it_cannot_run(model) -> None:
    ids = tokens(1, 9)
    with pytest.raises(ValueError, match="needs a router"):
        modeling_ssa.SSAForCausalLM(tiny_config(router=None))(ids)
    with pytest.raises(ValueError, match="SSACache"):
        model(ids, cache=DynamicCache())
    with pytest.raises(ValueError, match=r"head_modes must be bool \[layers, batch, kv heads\]"):
        model(ids, head_modes=torch.ones(LAYERS, 1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="router must be None or a dict"):
        tiny_config(router={"pool_tokens": 0, "hidden_multiple": 4})
