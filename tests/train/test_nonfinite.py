"""A non-finite loss skips the update and is counted; too many in a row stop the run, checkpoint kept."""

from __future__ import annotations

import json

import pytest
import torch

from ssa_pretrain.config import load_config
from ssa_pretrain.trainer import Trainer, TrainingError
from tests.helpers import REPO
from tests.train.test_train import FAST

pytestmark = pytest.mark.usefixtures("megatron_world")


def trainer_with_nan_losses(run_dir, data, bad_steps: set[int], *overrides: str) -> Trainer:
    cfg = load_config(REPO / "configs/train/tiny-cpu.yaml", [*FAST, f"data.dir={data}", *overrides])
    trainer = Trainer(cfg, run_dir)
    clean = trainer._cross_entropy

    def poisoned(tokens: torch.Tensor) -> torch.Tensor:
        loss = clean(tokens)
        return loss * float("nan") if trainer.step + 1 in bad_steps else loss

    trainer._cross_entropy = poisoned
    return trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if torch.is_tensor(v)}


def test_isolated_nonfinite_step_is_skipped_and_counted(tiny_data, tmp_path):
    trainer = trainer_with_nan_losses(
        tmp_path / "run", tiny_data, {3}, "train.steps=5", "train.max_nonfinite=2"
    )
    try:
        for _ in range(2):
            trainer.train_step()
            trainer.step += 1
        before = weights(trainer)
        metrics = trainer.train_step()  # step 3: NaN
        trainer.step += 1
        assert metrics["skipped_updates"] == 1 and trainer.nonfinite_streak == 1
        after = weights(trainer)
        assert all(torch.equal(before[k], after[k]) for k in before)  # the update was skipped
        metrics = trainer.train_step()
        assert trainer.nonfinite_streak == 0 and metrics["skipped_updates"] == 1
    finally:
        trainer.logger.close()


def test_too_many_in_a_row_stop_with_the_last_good_checkpoint(tiny_data, tmp_path):
    trainer = trainer_with_nan_losses(
        tmp_path / "run",
        tiny_data,
        {3, 4, 5},
        "train.steps=8",
        "train.save_interval=2",
        "train.max_nonfinite=3",
    )
    try:
        with pytest.raises(TrainingError, match="3 consecutive non-finite losses at step 5"):
            trainer.train()
    finally:
        trainer.logger.close()
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step-000004"
    meta = json.loads((tmp_path / "run/checkpoints/step-000004/meta.json").read_text())
    assert meta["step"] == 4 and meta["skipped_updates"] == 2
    assert json.loads((tmp_path / "run/status.json").read_text())["state"] == "failed"
