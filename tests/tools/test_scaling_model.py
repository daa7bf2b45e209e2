"""tools/scaling_model.py: the two CP ways (`cp_comm`) of the cost model, and the layer table's simulated
columns read from `tools/bench_cp.py --simulate` lines."""

from __future__ import annotations

import importlib
import json

import pytest

from ssa_pretrain.config import load_config
from tests.helpers import REPO


@pytest.fixture(scope="module")
def sm():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO / "tools"))
        yield importlib.import_module("scaling_model")


@pytest.fixture(scope="module")
def cfg():
    return load_config(REPO / "configs/model/1b.yaml", ["train.steps=1"])


@pytest.fixture(scope="module")
def model(sm, cfg):
    return sm.Model(cfg, sm.Calibration(sm.PERF, cfg), sm.HARDWARE["h200"], "none", "allgather")


def layer_ms(model, point) -> float:
    a = model.attention(point)
    return a["full"] + a["selection"] + a["sparse"] + sum(model.layer_exposed_ms(point).values())


def test_allgather_beats_ring_at_cp2(sm, model):
    point = sm.Point("cp", 65536, 1, 2, 1)
    ring = model.with_cp_comm("ring")
    assert layer_ms(model, point) < layer_ms(ring, point)
    # the same full-attention pairs either way; the ring runs the sparse kernel on more rows
    assert model.attention(point)["full"] == ring.attention(point)["full"]
    assert model.sparse_rows(point) == 65536 / 2 < ring.sparse_rows(point)
    assert model.transfers(point)["compute_fwd"] == 0 < ring.transfers(point)["compute_fwd"]


def test_unknown_cp_comm_is_refused(sm, cfg, model):
    with pytest.raises(ValueError, match="cp_comm must be one of ring, allgather"):
        sm.Model(cfg, model.cal, model.hw, "none", "alltoall")


def test_layer_table_reads_the_simulated_lines(sm, cfg, model, tmp_path):
    m = cfg.model
    line = dict(mode="simulate", device="NVIDIA H200", seqlen=65536, cp=2, cp_comm="allgather",
                heads=m.num_attention_heads, kv_heads=m.num_kv_heads, head_dim=m.kv_channels,
                block_size=cfg.ssa.block_size, block_count=cfg.ssa.block_count, ssa_rank_ms=[60.0, 50.0],
                ssa_exposed_ms=1.0, ssa_speedup_exposed=2.5, full_speedup=1.5)  # fmt: skip
    lines = [
        {**line, "ssa_rank_ms": [99.0, 99.0]},  # superseded by the later line of the same point
        line,
        {**line, "device": "NVIDIA H100 80GB HBM3", "cp_comm": "ring"},  # another GPU kind
        {**line, "heads": 4, "cp_comm": "ring"},  # another shape
    ]
    path = tmp_path / "bench_cp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    simulated = sm.simulated_lines(path, cfg, "h200")
    assert list(simulated) == [(65536, 2, "allgather")]
    rows = {tuple(c.strip() for c in r.split("|")[1:4]): r.split("|")[1:-1]
            for r in sm.layer_table(model, [65536], [1, 2], simulated)[2:]}  # fmt: skip
    assert set(rows) == {("64K", "2", "ring"), ("64K", "2", "allgather")}
    cells = [c.strip() for c in rows["64K", "2", "allgather"]]
    predicted = layer_ms(model, sm.Point("cp", 65536, 1, 2, 1))
    assert cells[4] == f"{predicted:.1f} ms"
    assert cells[5:7] == ["61.0 ms", f"{predicted / 61.0:.2f}"]  # busiest rank + exposed
    assert cells[8] == "2.50x" and cells[10] == "1.50x" and cells[12] == "1.00 ms"
    ring = [c.strip() for c in rows["64K", "2", "ring"]]
    assert ring[5] == ring[6] == ring[8] == ring[10] == ring[12] == "-"


def test_measured_steps_match_the_cp_comm(sm, tmp_path):
    """A bench_scaling line counts only for the model of its `cp_comm`; lines without one are the ring's."""
    base = {"config": "configs/model/1b.yaml", "recompute": "selective", "device": "NVIDIA H200",
            "layout": "cp", "world_size": 2, "seqlen": 65536}  # fmt: skip
    path = tmp_path / "bench_scaling.jsonl"
    lines = [{**base, "step_ms": 1.0}, {**base, "cp_comm": "allgather", "step_ms": 2.0}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    point = ("cp", 2, 65536)
    ring = sm._measured(path, "configs/model/1b.yaml", "selective", "ring", "h200")
    gathered = sm._measured(path, "configs/model/1b.yaml", "selective", "allgather", "h200")
    assert ring[point]["step_ms"] == 1.0 and gathered[point]["step_ms"] == 2.0
