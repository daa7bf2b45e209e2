"""The typed config: YAML + includes + dotted overrides; errors name the key and the allowed values."""

from __future__ import annotations

import pytest

from ssa_pretrain.config import ConfigError, dump_config, load_config
from tests.helpers import REPO

TRAIN_CONFIGS = sorted((REPO / "configs/train").glob("*.yaml"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.model.num_layers >= 1 and cfg.train.steps >= 1


def test_1b_is_the_released_shape():
    m = load_config(REPO / "configs/train/1b-8k.yaml").model
    assert (m.hidden_size, m.num_layers, m.num_attention_heads, m.kv_channels, m.num_kv_heads) == (
        2048,
        16,
        32,
        64,
        2,
    )
    assert (m.ffn_hidden_size, m.rope_theta, m.tie_embeddings) == (8192, 500000.0, True)


def test_overrides_parse_yaml_scalars_and_round_trip(tmp_path):
    cfg = load_config(
        REPO / "configs/train/tiny-cpu.yaml", ["train.lr=2e-3", "ssa.variant=full", "model.vocab_size=null"]
    )
    assert cfg.train.lr == 2e-3 and cfg.ssa.variant == "full" and cfg.model.vocab_size is None
    (tmp_path / "resolved.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.hiden_size=3", "model.hiden_size: unknown key (did you mean 'hidden_size'?)"),
        ("ssa.block_count=0", "ssa.block_count: Input should be greater than or equal to 1"),
        ("ssa.full_ratio=1.5", "ssa.full_ratio: Input should be less than or equal to 1"),
        ("ssa.variant=dense", "ssa.variant: Input should be 'full', 'sparse' or 'ssa'"),
        ("model.num_kv_heads=3", "num_kv_heads=3 must divide num_attention_heads=4"),
        ("parallel.tp=4", "parallel.tp=4 must divide model.num_kv_heads=2"),
        ("parallel.sequence_parallel=true", "parallel.sequence_parallel=true needs parallel.tp > 1"),
        ("train.global_batch_size=12", "global_batch_size=12 is not a multiple of micro_batch_size=8"),
        ("nonsense.key=1", "nonsense: unknown key"),
        ("train.steps", "is not of the form section.key=value"),
    ],
)
def test_bad_values_are_named(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs/train/tiny-cpu.yaml", [override])
    assert expected in str(err.value)


def test_sequence_parallel_needs_whole_tokens_on_every_tensor_parallel_rank():
    overrides = ["parallel.tp=4", "model.num_kv_heads=4", "parallel.sequence_parallel=true"]
    load_config(REPO / "configs/train/tiny-cpu.yaml", [*overrides, "data.seq_len=64"])
    with pytest.raises(
        ConfigError, match=r"data.seq_len=66 must be a multiple of parallel.cp \* parallel.tp = 4"
    ):
        load_config(REPO / "configs/train/tiny-cpu.yaml", [*overrides, "data.seq_len=66"])


def test_include_is_relative_and_own_keys_win(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model: {num_layers: 2, hidden_size: 64, num_attention_heads: 4,"
        " num_kv_heads: 1, ffn_hidden_size: 128}\ntrain: {steps: 3}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/run.yaml").write_text("include: ../base.yaml\nmodel: {num_layers: 3}\n")
    cfg = load_config(tmp_path / "sub/run.yaml")
    assert cfg.model.num_layers == 3 and cfg.model.hidden_size == 64 and cfg.train.steps == 3


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
