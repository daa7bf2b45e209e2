"""The export's KV cache under the installed transformers: greedy `generate` with the cache equals it without,
in full and sparse mode, for one prompt and a left-padded batch; decoding through the cache argument gives the
logits of one uncached forward; caches the model cannot use are refused. A tiny random model, no training."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StaticCache

from ssa_pretrain.hf import modeling_ssa
from ssa_pretrain.hf.configuration_ssa import SSAConfig

BLOCK_SIZE, BLOCK_COUNT = 4, 2
PROMPTS = [[5, 17, 9, 33, 2, 41, 8, 60, 12, 7, 25], [44, 3, 19, 50, 6]]  # 11 and 5 tokens
NEW_TOKENS = 14  # the long row reaches 25 tokens = 7 blocks: sparse attention (K=2) drops blocks
PAD = 0


@pytest.fixture(scope="module")
def model() -> modeling_ssa.SSAForCausalLM:
    config = SSAConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, block_size=BLOCK_SIZE, block_count=BLOCK_COUNT, initializer_range=0.3,
        bos_token_id=None, eos_token_id=None, pad_token_id=PAD,
    )  # fmt: skip
    torch.manual_seed(0)  # large random weights: far-apart logits, so greedy choices are not near ties
    return modeling_ssa.SSAForCausalLM(config).eval()


def left_padded(prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return {"input_ids": ids, "attention_mask": mask}


def generate(model, inputs: dict[str, torch.Tensor], use_cache: bool):
    return model.generate(
        **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=use_cache,
        return_dict_in_generate=True, output_logits=True,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["full", "sparse"])
@pytest.mark.parametrize("batch", ["single", "left-padded"])
def test_greedy_generation_with_cache_equals_without(model, mode: str, batch: str) -> None:
    model.config.inference_mode = mode
    inputs = left_padded(PROMPTS if batch == "left-padded" else PROMPTS[:1])
    with torch.no_grad():
        cached, uncached = generate(model, inputs, True), generate(model, inputs, False)
        # the logits of every decoding step are those of one uncached forward over the whole sequence
        mask = torch.cat([inputs["attention_mask"], torch.ones(len(inputs["input_ids"]), NEW_TOKENS)], 1)
        once = model(cached.sequences, attention_mask=mask.long(), use_cache=False).logits
    prompt_len = inputs["input_ids"].shape[1]
    steps = torch.stack(cached.logits, 1)  # [B, NEW_TOKENS, vocab]
    torch.testing.assert_close(steps, once[:, prompt_len - 1 : -1], rtol=1e-4, atol=1e-4)
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    cache = getattr(cached, modeling_ssa.CACHE_ARG)
    assert isinstance(cache, modeling_ssa.SSACache) and cache.get_seq_length() == prompt_len + NEW_TOKENS - 1
    assert bool(cache.block_means) == (mode == "sparse")  # the sparse steps reused the cached block means
    if batch == "left-padded":  # each padded row continues exactly like its prompt alone
        for row, prompt in enumerate(PROMPTS):
            model_alone = generate(model, left_padded([prompt]), True).sequences[0].tolist()
            assert cached.sequences[row, prompt_len - len(prompt) :].tolist() == model_alone


def test_sparse_mode_drops_blocks_at_this_length(model) -> None:
    """Otherwise the sparse cases above would test full attention twice."""
    inputs = left_padded(PROMPTS[:1])
    logits = {}
    with torch.no_grad():
        for mode in ("full", "sparse"):
            model.config.inference_mode = mode
            logits[mode] = generate(model, inputs, True).logits[-1]
    assert (logits["full"] - logits["sparse"]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["full", "sparse"])
@pytest.mark.parametrize("cache_class", [modeling_ssa.SSACache, DynamicCache])
def test_decoding_through_the_cache_argument_equals_one_forward(model, mode: str, cache_class) -> None:
    """A prefill, then one token at a time, with the cache under the installed transformers' argument name;
    a plain `DynamicCache` (no stored block means) gives the same logits as an `SSACache`."""
    model.config.inference_mode = mode
    inputs = left_padded(PROMPTS)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    cache, steps = cache_class(), []
    with torch.no_grad():
        once = model(ids, attention_mask=mask, use_cache=False).logits
        split = 3
        for end in range(split, ids.shape[1] + 1):
            start = 0 if end == split else end - 1
            out = model(ids[:, start:end], attention_mask=mask[:, :end], **{modeling_ssa.CACHE_ARG: cache})
            assert getattr(out, modeling_ssa.CACHE_ARG) is cache
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), once, rtol=1e-4, atol=1e-4)


def test_a_cache_that_does_not_grow_with_the_sequence_is_refused(model) -> None:
    cache = StaticCache(config=model.config, max_cache_len=32)
    with pytest.raises(ValueError, match="StaticCache"):
        model(torch.tensor([PROMPTS[1]]), **{modeling_ssa.CACHE_ARG: cache})


def test_the_older_cache_name_is_accepted_once(model) -> None:
    """Code written for older transformers passes `past_key_values`; the same cache twice is an error."""
    model.config.inference_mode = "sparse"
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        once = model(ids, use_cache=False).logits
        cache = modeling_ssa.SSACache()
        first = model(ids[:, :6], past_key_values=cache).logits
        rest = model(ids[:, 6:], past_key_values=cache).logits
        torch.testing.assert_close(torch.cat([first, rest], 1), once, rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="pass the cache once"):
            model(ids, cache=cache, past_key_values=cache)
