"""Metrics helpers: resume-time truncation of metrics.jsonl and the FLOP count behind MFU."""

from __future__ import annotations

import json

from ssa_pretrain.config import load_config
from ssa_pretrain.metrics import flops_per_token, truncate_metrics
from tests.helpers import REPO


def test_truncation_keeps_complete_lines_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 7)]
    path.write_text("\n".join(lines) + '\n{"step": 7, "lo')  # a run killed mid-write
    truncate_metrics(path, after_step=4)
    assert path.read_text().splitlines() == lines[:4]


def test_flops_count_both_branches_in_ssa():
    def per_token(variant: str) -> float:
        cfg = load_config(REPO / "configs/train/1b-8k.yaml", [f"ssa.variant={variant}"])
        return flops_per_token(cfg, 1_211_697_152)

    weights = 6 * 1_211_697_152
    # full: + 12 * 32 heads * 64 * 16 layers * 4096 (causal mean context of 8192)
    assert per_token("full") == weights + 12 * 32 * 64 * 16 * 4096
    assert weights < per_token("sparse") < per_token("full") < per_token("ssa")
    assert per_token("ssa") == per_token("full") + per_token("sparse") - weights
