"""tools/bench_train.py on CPU with the tiny model: the anchor's line beside `ssa`'s, each with the step split
and the memory report, every engine freed once its variant is measured, and the simulated context-parallel
rank."""

from __future__ import annotations

import gc
import importlib
import json
import os
import subprocess
import sys
import weakref

import pytest
import torch
from megatron.core.models.gpt import GPTModel
from torch.optim import Optimizer

from tests.helpers import REPO

pytestmark = pytest.mark.usefixtures("megatron_world")
TINY = ["--model", "configs/train/tiny-cpu.yaml", "--seq-len", "64", "--micro-batch", "2", "--vocab-size",
        "320", "--warmup", "1", "--steps", "2", "ssa.block_size=8", "ssa.block_count=3"]  # fmt: skip


@pytest.fixture
def bench_train(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LOCAL_RANK", "0")  # DeepSpeed asks; the in-process world of one has no launcher
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    return importlib.import_module("bench_train")


def test_anchor_beside_ssa_with_split_and_memory(bench_train):
    args = bench_train.parse_args([*TINY, "--split", "--memory", "--timeline"])
    rows: list[dict] = []
    for variant in ("anchor", "ssa"):
        bench_train.run_variant(args, variant, {}, rows.append)
    anchor, ssa = rows
    assert ssa["params"] - anchor["params"] == 4 * 128 * 4  # the anchor has no per-head gate
    for row in rows:
        assert row["step_ms"] > 0 and row["tokens_per_s"] > 0 and not row["oom"]
        assert len(row["losses"]) == 3 and all(4.0 < x < 8.0 for x in row["losses"])  # ~ln(320) = 5.77
        assert list(row["phase_ms"]) == list(bench_train.PHASES) and min(row["phase_ms"].values()) > 0
        assert sum(row["phase_ms"].values()) == pytest.approx(row["step_ms"], rel=1e-3, abs=1e-2)
        assert set(row["split_ms"]) == set(bench_train.PARTS)
        assert sum(row["split_ms"].values()) > 0
        assert row["split_ms"]["gemm"] > 0 and row["split_ms"]["optimizer"] > 0
        assert row["split_ms"]["logits_ce"] > 0 and row["split_ms"]["norm_act_rope"] > 0
        for part, top in row["split_top"].items():  # the largest ops of each part, largest first
            assert 0 < len(top) <= bench_train.TOP_KERNELS and row["split_ms"][part] > 0
            assert [ms for _, ms in top] == sorted((ms for _, ms in top), reverse=True)
            rounding = (len(top) + 1) * 5e-4  # each listed time and the part's total rounded to 1 us
            assert sum(ms for _, ms in top) <= row["split_ms"][part] + rounding
        assert any(name == "aten::mm" for name, _ in row["split_top"]["gemm"])
        assert set(row["split_launches"]) == set(bench_train.PARTS)
        assert all((row["split_launches"][part] > 0) == (ms > 0) for part, ms in row["split_ms"].items())
        assert "timeline_error" not in row, row.get("timeline_error")
        regions = row["timeline_ms"]
        assert list(regions) == [name for name, _, _ in bench_train.TIMELINE_REGIONS]
        assert all(region["host"] > 0 for region in regions.values())  # the marks come in this order
        assert len(row["layer_forward_ms"]) == len(row["layer_backward_ms"]) == 4
        assert 0 < sum(row["layer_forward_ms"]) <= regions["layers_forward"]["host"] + 1e-2  # inside it
        backward = regions["layers_backward"]["host"]
        assert sum(row["layer_backward_ms"]) == pytest.approx(backward, abs=1e-2)  # one after the other
    assert anchor["split_ms"]["full_attention"] > 0
    assert anchor["split_ms"]["selection"] == anchor["split_ms"]["sparse_attention"] == 0
    assert anchor["split_ms"]["alignment"] == 0
    for part in ("full_attention", "selection", "sparse_attention", "alignment"):
        assert ssa["split_ms"][part] > 0, part

    assert set(ssa["memory"]) == {"full", "sparse"} and len(anchor["memory"]) == 1
    (anchor_memory,) = anchor["memory"].values()
    for report in (anchor_memory, *ssa["memory"].values()):
        assert len(report["saved_per_layer_mib"]) == 4 and min(report["saved_per_layer_mib"]) > 0
        assert report["saved_gib"] > report["saved_outside_layers_gib"] > 0
        assert report["largest_saved"][0][3] > 0
    core = "self_attention.core_attention"
    both = ssa["memory"]["sparse"]["saved_per_layer_by_part_mib"][core]
    assert both > anchor_memory["saved_per_layer_by_part_mib"][core]  # ssa keeps both branches' outputs


def test_every_engine_is_freed(bench_train):
    """DeepSpeed's hooks keep a model and its optimizer alive after `del` + `gc.collect()` unless the engine
    is destroyed; a leaked engine would count in the next variant's memory."""

    def alive() -> tuple[int, int]:
        gc.collect()
        objects = gc.get_objects()
        return sum(isinstance(o, GPTModel) for o in objects), sum(isinstance(o, Optimizer) for o in objects)

    before = alive()
    bench_train.run_variant(bench_train.parse_args(TINY), "full", {}, lambda row: None)
    assert alive() == before


def test_longest_stops_at_the_first_shape_that_trains(bench_train):
    rows: list[dict] = []
    args = bench_train.parse_args([*TINY, "--seq-len", "32", "64", "--longest"])
    bench_train.run_variant(args, "sparse", {}, rows.append)
    assert [(r["seq_len"], r["oom"]) for r in rows] == [(64, False)]


def test_memory_report_keeps_no_activation_alive(bench_train):
    """The saved-tensor hooks must not tie a saved output to its own graph node (a cycle that Python's
    collector cannot see): a leaked graph would hold a whole forward's activations for the rest of the run."""
    produced = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 8)

        def forward(self, x):
            h = torch.tanh(self.linear(x))  # tanh saves its own output for backward
            produced.append(weakref.ref(h))
            return h.sum()

    net = Net()
    report = bench_train.saved_for_backward(net, lambda: net(torch.randn(4, 8)))
    gc.collect()
    assert report["largest_saved"]  # the report saw the saved tensors
    assert produced[0]() is None


def test_split_and_memory_report_leave_no_graph_behind(bench_train):
    """No tensor of an autograd graph outlives its variant (Megatron's RoPE cache may stay: no graph)."""

    def graph_tensors() -> int:
        gc.collect()
        return sum(torch.is_tensor(o) and o.grad_fn is not None for o in gc.get_objects())

    before = graph_tensors()
    bench_train.run_variant(
        bench_train.parse_args([*TINY, "--split", "--memory"]), "ssa", {}, lambda row: None
    )
    assert graph_tensors() == before


def test_zero_moved_bytes_follow_the_optimizer(bench_train):
    """Per rank and step: ZeRO reduce-scatters bf16 gradients, the BF16 optimizer all-reduces fp32 ones
    (twice the share, 4 bytes each); both all-gather the bf16 parameters."""
    assert bench_train.zero_moved_bytes("DeepSpeedZeroOptimizer", 4, 1000) == 750 * 2 + 750 * 2
    assert bench_train.zero_moved_bytes("BF16_Optimizer", 4, 1000) == 2 * 750 * 4 + 750 * 2
    assert bench_train.zero_moved_bytes("BF16_Optimizer", 1, 1000) == 0


def test_simulated_context_parallel_rank_runs_its_share(tmp_path):
    """`--simulate-cp 2`: one process trains CP rank 0's share (half of each sequence: the largest saved
    tensor is the logits of 128 of the 256 tokens), its attention layers move real bytes, the optimizer
    steps (the loss changes), and the line says what the fake group did not send."""
    out = tmp_path / "sim.jsonl"
    command = [sys.executable, "tools/bench_train.py", *TINY[:2], "--seq-len", "256", *TINY[4:],
               "--variants", "ssa", "--simulate-cp", "2", "--memory", "--out", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = (json.loads(line) for line in out.read_text().splitlines())
    assert row["simulate_cp"] == 2 and "error" not in row and not row["oom"]
    assert row["step_ms"] > 0 and len(set(row["losses"])) > 1
    assert row["cp_moved_bytes_per_step"] > 0
    assert row["zero_optimizer"] == "DeepSpeedZeroOptimizer"  # fp32: the BF16 optimizer needs bf16 weights
    assert row["zero_moved_bytes_per_step"] == round(2 * 0.5 * row["params"] * 2)
    largest = row["memory"]["full"]["largest_saved"][0]
    assert largest[1][:2] == [128, 2] and largest[1][2] >= 320  # [tokens of this rank, batch, vocab]


def test_simulate_cp_refuses_the_anchor(bench_train):
    with pytest.raises(SystemExit):
        bench_train.parse_args([*TINY, "--variants", "anchor", "ssa", "--simulate-cp", "2"])


def test_the_anchor_keeps_megatrons_loss_and_the_variants_the_recipes(bench_train):
    """Without `--cross-entropy` the variants train with the run config's loss (the 40M recipe: fused), the
    anchor with Megatron's (plain Megatron-Core); the flag sets both."""
    recipe = ["--model", "configs/train/40m-2k.yaml"]
    losses = {
        flag: {
            variant: bench_train.bench_config(
                bench_train.parse_args([*recipe, *flag]), variant, 2048, 2
            ).train.cross_entropy
            for variant in ("anchor", "full", "ssa")
        }
        for flag in ((), ("--cross-entropy", "megatron"), ("--cross-entropy", "fused"))
    }
    assert losses[()] == {"anchor": "megatron", "full": "fused", "ssa": "fused"}
    assert set(losses[("--cross-entropy", "megatron")].values()) == {"megatron"}
    assert set(losses[("--cross-entropy", "fused")].values()) == {"fused"}
