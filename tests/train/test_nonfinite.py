"""Non-finite numbers, injected through the command line (`debug.inject_nonfinite_at`): a non-finite loss or
gradient norm skips the update and is counted; too many in a row stop the run; non-finite weights are never
checkpointed, so "the last good checkpoint" is one."""

from __future__ import annotations

import json

import pytest
import torch

from ssa_pretrain.checkpoint import MODEL_STATES
from tests.helpers import read_metrics
from tests.train.test_train import BF16_FP32_GRADS, run


def weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / f"checkpoints/step-{step:06d}" / MODEL_STATES, weights_only=True)
    return {k: v for k, v in state["module"].items() if torch.is_tensor(v)}


@pytest.mark.parametrize("precision", [(), BF16_FP32_GRADS], ids=["fp32", "bf16-fp32-grads"])
def test_nonfinite_gradients_skip_the_update_and_are_counted(tiny_data, tmp_path, precision):
    run_dir = tmp_path / "run"
    run(run_dir, tiny_data, "train.steps=3", "train.save_interval=1", *precision,
        "debug.inject_nonfinite_at=2", "debug.inject_nonfinite_into=gradients")  # fmt: skip
    metrics = read_metrics(run_dir)
    assert isinstance(metrics[1]["loss"], float) and metrics[1]["grad_norm"] in ("inf", "nan")
    assert [m["skipped_updates"] for m in metrics] == [0, 1, 1]
    one, two = weights(run_dir, 1), weights(run_dir, 2)
    assert all(torch.equal(one[k], two[k]) for k in one)  # step 2 changed nothing
    assert not all(torch.equal(two[k], v) for k, v in weights(run_dir, 3).items())  # step 3 did


def test_too_many_in_a_row_stop_with_the_last_good_checkpoint(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = run(run_dir, tiny_data, "train.steps=8", "train.save_interval=2", "train.max_nonfinite=3",
               "debug.inject_nonfinite_at=[3,4,5]", check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "3 consecutive non-finite losses at step 5" in proc.stderr
    assert f"last good checkpoint is {run_dir / 'checkpoints/step-000004'}" in proc.stderr
    assert (run_dir / "checkpoints/latest").read_text() == "step-000004"
    meta = json.loads((run_dir / "checkpoints/step-000004/meta.json").read_text())
    assert meta["step"] == 4 and meta["skipped_updates"] == 2
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "non-finite losses" in status["reason"]


def test_nonfinite_weights_are_not_checkpointed(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = run(run_dir, tiny_data, "train.steps=4", "train.save_interval=1",
               "debug.inject_nonfinite_at=3", "debug.inject_nonfinite_into=weights", check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "the weights are non-finite after step 3" in proc.stderr
    assert f"last good checkpoint is {run_dir / 'checkpoints/step-000002'}" in proc.stderr
    assert (run_dir / "checkpoints/latest").read_text() == "step-000002"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == ["step-000001", "step-000002"]
    assert all(torch.isfinite(v).all() for v in weights(run_dir, 2).values())
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
