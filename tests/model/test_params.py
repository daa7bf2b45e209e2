"""Parameter counts: the analytic formula (what `ssa params` prints) equals Megatron's built model."""

from __future__ import annotations

import pytest

from ssa_pretrain.cli import main
from ssa_pretrain.model.gpt import build_model, count_parameters, padded_vocab_size
from tests.helpers import REPO, tiny_config

pytestmark = pytest.mark.usefixtures("megatron_world")


@pytest.mark.parametrize(
    ("size", "vocab", "expected"),
    [("tiny", 8192, None), ("300m", 32000, None), ("1b", 128256, 1_211_697_152)],
)
@pytest.mark.parametrize("gate", [True, False])
def test_formula_matches_megatron(size, vocab, expected, gate):
    cfg = tiny_config().model_copy(update={"model": _model(size)})
    cfg.ssa.output_gate = gate
    model = build_model(cfg, vocab, device="meta")
    built = sum(p.numel() for p in model.parameters())
    formula = count_parameters(cfg.model, padded_vocab_size(vocab, cfg.model, 1), gate)
    assert built == formula
    if expected is not None and gate:
        # 16 x (attention 2048*64*(2*32 + 2*2) + gate 2048*32 + SwiGLU 3*2048*8192 + 2 norms 2*2048)
        # + final norm 2048 + tied embedding 128256*2048 = 1,211,697,152 (the Llama-3 vocabulary)
        assert formula == expected


def _model(size: str):
    from ssa_pretrain.config import ModelConfig, read_yaml

    return ModelConfig.model_validate(read_yaml(REPO / f"configs/model/{size}.yaml")["model"])


def test_cli_prints_the_count(capsys):
    assert main(["params", str(REPO / "configs/model/1b.yaml"), "--vocab-size", "128256"]) == 0
    out = capsys.readouterr().out
    assert "total: 1,211,697,152 (1.212 B)" in out
    assert main(["params", str(REPO / "configs/model/1b.yaml")]) == 2
