"""The export's config refuses an attention setting it cannot run when it is set: at construction, as a
`from_pretrained` override (transformers applies those after `__init__`) and on `model.config` later."""

from __future__ import annotations

import re

import pytest

from ssa_pretrain.hf.configuration_ssa import SSAConfig

BAD = [
    ("block_count", 0, "block_count must be a positive integer, got 0"),
    ("block_size", -8, "block_size must be a positive integer, got -8"),
    ("attention_chunk_size", 2.5, "attention_chunk_size must be a positive integer, got 2.5"),
    ("block_count", True, "block_count must be a positive integer, got True"),
    ("inference_mode", "foo", "inference_mode must be one of ('full', 'sparse', 'elastic'), got 'foo'"),
]
IDS = [f"{name}={value!r}" for name, value, _ in BAD]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("config")
    SSAConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4).save_pretrained(path)
    return path


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=IDS)
def test_bad_value_is_refused_at_load(saved, name, value, message) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SSAConfig.from_pretrained(saved, **{name: value})


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=IDS)
def test_bad_value_is_refused_at_construction_and_on_assignment(name, value, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SSAConfig(**{name: value})
    config = SSAConfig()
    with pytest.raises(ValueError, match=re.escape(message)):
        setattr(config, name, value)
    assert getattr(config, name) == getattr(SSAConfig(), name)  # unchanged


def test_good_overrides_load(saved) -> None:
    config = SSAConfig.from_pretrained(saved, inference_mode="sparse", block_count=8, block_size=32)
    assert (config.inference_mode, config.block_count, config.block_size) == ("sparse", 8, 32)


def test_kv_heads_must_divide_heads() -> None:
    with pytest.raises(ValueError, match="num_key_value_heads=3 must divide num_attention_heads=32"):
        SSAConfig(num_key_value_heads=3)
