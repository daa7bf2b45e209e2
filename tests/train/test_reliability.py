"""What a run directory guarantees, tried through `ssa train` as a user would break it: lost or damaged
checkpoints, changed configs and datasets, planted pickles, a full disk, bad values. docs/DEVELOPMENT.md
("What is guaranteed") lists these cases.

One run (6 steps, a checkpoint every 2) is trained per module; each test damages a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from ssa_pretrain.checkpoint import MODEL_STATES, check_resumable
from ssa_pretrain.config import TrainConfig
from ssa_pretrain.data.manifest import manifest_digest
from ssa_pretrain.optim import lr_at
from tests.helpers import REPO, read_metrics, tiny_config, train_command
from tests.train.test_train import FAST, run

BASE = ["train.steps=6", "train.save_interval=2", "train.keep_last=3"]
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> dict:
    """The shared run, launched through `io_trace.py` (fsyncs and renames recorded); `status.json` is read
    while the process is paused after its second step."""
    root = tmp_path_factory.mktemp("trained")
    run_dir, trace = root / "run", root / "io.jsonl"
    cmd = train_command(run_dir, 1, *FAST, f"data.dir={tiny_data}", *BASE)
    cmd[1:3] = [str(REPO / "tests/train/io_trace.py")]  # in place of `-m ssa_pretrain.train`
    proc = subprocess.Popen(
        cmd, cwd=REPO, env={**os.environ, "SSA_IO_TRACE": str(trace)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    metrics, during = run_dir / "metrics.jsonl", None
    deadline = time.time() + 300
    while during is None and time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGSTOP)
            during = json.loads((run_dir / "status.json").read_text())
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return {"run_dir": run_dir, "trace": trace, "status_during": during}


def copy_run(trained: dict, tmp_path, latest: str | None = None):
    """A copy of the shared run; `latest`: make that the newest checkpoint (drop the later ones)."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained["run_dir"], run_dir)
    ckpt = run_dir / "checkpoints"
    if latest is not None:
        for path in ckpt.glob("step-*"):
            if path.name > latest:
                shutil.rmtree(path)
        (ckpt / "latest").write_text(latest)
    return run_dir


def status(run_dir) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def kept(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))


def test_status_json_follows_the_run(trained):
    during = trained["status_during"]
    assert during is not None and during["state"] == "running" and during["step"] >= 1, during
    assert status(trained["run_dir"]) == {"state": "completed", "step": 6, "steps": 6}


def test_checkpoints_are_fsynced_before_they_are_published(trained):
    """Before a rename publishes `step-N` or `latest`, every file in it and the directory itself are fsynced;
    after it, `checkpoints/` is (so the rename itself survives a power loss)."""
    events = [json.loads(line) for line in trained["trace"].read_text().splitlines()]
    ckpt = os.path.realpath(trained["run_dir"] / "checkpoints")
    published = [(i, src, dst) for i, (kind, *paths) in enumerate(events) if kind == "rename"
                 for src, dst in [paths] if os.path.dirname(dst) == ckpt]  # fmt: skip
    names = [os.path.basename(dst) for _, _, dst in published]
    assert names == ["step-000002", "latest", "step-000004", "latest", "step-000006", "latest"], names
    files = os.listdir(trained["run_dir"] / "checkpoints/step-000006")  # the same names in every checkpoint
    for i, src, dst in published:
        synced_before = {paths[0] for kind, *paths in events[:i] if kind == "fsync"}
        must = {src} if os.path.basename(dst) == "latest" else {src} | {os.path.join(src, f) for f in files}
        assert must <= synced_before, (dst, sorted(must - synced_before))
        assert ["fsync", ckpt] in events[i + 1 :], f"{ckpt} not fsynced after publishing {dst}"


def test_lost_latest_pointer_resumes_from_the_newest_complete_checkpoint(trained, tiny_data, tmp_path):
    """Without `latest` the newest complete step-* is resumed: history kept, the new checkpoint kept."""
    run_dir = copy_run(trained, tmp_path, latest="step-000004")
    (run_dir / "checkpoints/latest").unlink()
    before = read_metrics(run_dir)
    proc = run(run_dir, tiny_data, *BASE, "train.keep_last=1")
    assert "resuming from the newest complete checkpoint" in proc.stderr and "step-000004" in proc.stderr
    after = read_metrics(run_dir)
    assert after[:4] == before[:4]  # not retrained: the very lines of steps 1-4 (timings included)
    assert [m["loss"] for m in after] == [m["loss"] for m in read_metrics(trained["run_dir"])]
    assert (run_dir / "checkpoints/latest").read_text() == "step-000006" and kept(run_dir) == ["step-000006"]


def test_changed_optimizer_setting_on_resume_is_refused(trained, tiny_data, tmp_path):
    run_dir = copy_run(trained, tmp_path, latest="step-000004")
    config, metrics = (run_dir / "config.yaml").read_text(), (run_dir / "metrics.jsonl").read_text()
    proc = run(run_dir, tiny_data, *BASE, "train.lr=0.001", "train.beta2=0.99", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "train.lr: checkpoint 0.003, config 0.001" in proc.stderr
    assert "train.beta2: checkpoint 0.95, config 0.99" in proc.stderr
    assert "--allow-config-change" in proc.stderr
    assert (run_dir / "config.yaml").read_text() == config  # the saved config stays the truth
    assert (run_dir / "metrics.jsonl").read_text() == metrics


def test_allowed_config_change_is_applied_and_recorded(trained, tiny_data, tmp_path):
    """--allow-config-change applies a new lr schedule from the checkpoint on (not the saved one)."""
    run_dir = copy_run(trained, tmp_path, latest="step-000004")
    new = ["train.lr=0.001", "train.min_lr=0.0001"]
    run(run_dir, tiny_data, *BASE, *new, "--allow-config-change")
    schedule = TrainConfig(steps=6, lr=1e-3, min_lr=1e-4, warmup_fraction=0.05)  # tiny-cpu's warm-up
    resumed = read_metrics(run_dir)[4:]
    assert [m["step"] for m in resumed] == [5, 6]
    assert [m["lr"] for m in resumed] == pytest.approx([lr_at(s, schedule) for s in (5, 6)], rel=1e-6)
    (record,) = [json.loads(line) for line in (run_dir / "config-changes.jsonl").read_text().splitlines()]
    assert record == {
        "step": 4,
        "changes": {"train.lr": {"from": 0.003, "to": 0.001}, "train.min_lr": {"from": 0.0003, "to": 0.0001}},
    }
    assert "lr: 0.001" in (run_dir / "config.yaml").read_text()


def test_old_checkpoints_rotate_by_step_number(trained, tiny_data, tmp_path):
    """Past step 999,999 the names no longer sort as text; the checkpoints kept are still the newest."""
    run_dir = copy_run(trained, tmp_path, latest="step-000004")
    ckpt = run_dir / "checkpoints"
    meta = json.loads((ckpt / "step-000004/meta.json").read_text())
    (ckpt / "step-000004/meta.json").write_text(json.dumps({**meta, "step": 999_998}))
    (ckpt / "step-000004").rename(ckpt / "step-999998")
    (ckpt / "latest").write_text("step-999998")
    run(run_dir, tiny_data, *BASE, "train.steps=1000000", "train.save_interval=1", "train.keep_last=2",
        "--allow-config-change")  # fmt: skip
    assert [m["step"] for m in read_metrics(run_dir)[-2:]] == [999_999, 1_000_000]
    assert kept(run_dir) == ["step-1000000", "step-999999"]
    assert (ckpt / "latest").read_text() == "step-1000000"


def test_resume_on_a_different_dataset_is_refused(trained, tiny_data, tmp_path):
    """Same samples in another shard order: another stream. Both manifest digests are named."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest_file = data / "train/manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["shards"][:2] = manifest["shards"][1::-1]
    manifest_file.write_text(json.dumps(manifest))
    run_dir = copy_run(trained, tmp_path)
    proc = run(run_dir, data, *BASE, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    digests = [
        manifest_digest(json.loads((d / "train/manifest.json").read_text())) for d in (tiny_data, data)
    ]
    old, new = digests
    assert "dataset:" in proc.stderr and old[:12] in proc.stderr and new[:12] in proc.stderr


class Payload:
    """Unpickling this runs a shell command: what a planted checkpoint file could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_planted_pickle_in_a_checkpoint_is_refused_unexecuted(trained, tiny_data, tmp_path):
    run_dir, marker = copy_run(trained, tmp_path), tmp_path / "code-ran"
    planted = run_dir / "checkpoints/step-000006" / MODEL_STATES
    torch.save({"module": Payload(marker)}, planted)
    proc = run(run_dir, tiny_data, *BASE, check=False)
    assert not marker.exists(), "unpickling the planted file ran its code"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{planted}: refused to load" in proc.stderr


def test_truncated_checkpoint_file_is_named_with_the_checkpoint_to_use(trained, tiny_data, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    damaged = run_dir / "checkpoints/step-000006" / OPTIM
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    proc = run(run_dir, tiny_data, *BASE, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{damaged}: unreadable, the file is truncated or damaged" in proc.stderr
    assert f"echo step-000004 > {run_dir / 'checkpoints/latest'}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_changed_micro_batch_on_resume_is_refused(trained, tiny_data, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    proc = run(run_dir, tiny_data, *BASE, "train.micro_batch_size=1", check=False)
    assert proc.returncode == 2 and "train.micro_batch_size: checkpoint 2, config 1" in proc.stderr
    assert "--allow-config-change" not in proc.stderr  # the data position depends on it: never allowed


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tiny_data, tmp_path):
    """A 20 MiB tmpfs holds one checkpoint (~14 MB) but not two: the second save fails."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mount], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        run_dir = mount / "run"
        proc = run(run_dir, tiny_data, "train.steps=4", "train.save_interval=2", check=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert f"disk full while writing {run_dir / 'checkpoints/.tmp-step-000004'}" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the partial checkpoint is removed
        assert (run_dir / "checkpoints/latest").read_text() == "step-000002"
        assert kept(run_dir) == ["step-000002"]
        state = status(run_dir)
        assert state["state"] == "failed" and "disk full" in state["reason"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize(
    ("overrides", "messages"),
    [
        (
            ["train.lr=inf", "ssa.alpha=.inf", "model.init_std=inf", "train.weight_decay=nan"],
            ["train.lr", "ssa.alpha", "model.init_std", "train.weight_decay", "finite number"],
        ),
        (["train.seed=-5"], ["train.seed: Input should be greater than or equal to 0"]),
        (["train.deepspeed_config=missing.json"], ["train.deepspeed_config: cannot read", "missing.json"]),
        (["model.vocab_size=100"], ["model.vocab_size=100 is smaller than the vocabulary", "(512)"]),
    ],
    ids=["non-finite", "negative-seed", "missing-deepspeed-json", "vocab-too-small"],
)
def test_bad_values_are_refused_at_start_up(tiny_data, tmp_path, overrides, messages):
    proc = run(tmp_path / "run", tiny_data, "train.steps=1", *overrides, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert all(m in proc.stderr for m in messages), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "step 1 |" not in proc.stdout


def test_include_cycle_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("include: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ssa_pretrain.cli", "train", str(tmp_path / "a.yaml")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    a, b = (str((tmp_path / n).resolve()) for n in ("a.yaml", "b.yaml"))
    assert f"include cycle: {a} -> {b} -> {a}" in proc.stderr


def test_shard_path_outside_the_dataset_is_refused(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest_file = data / "train/manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["shards"][0]["file"] = "../../../../etc/passwd"
    manifest_file.write_text(json.dumps(manifest))
    proc = run(tmp_path / "run", data, "train.steps=1", check=False)
    assert proc.returncode == 2
    assert "shard path '../../../../etc/passwd' leaves the dataset directory" in proc.stderr


def test_a_signal_landing_while_the_ranks_agree_is_not_lost(monkeypatch):
    """The stop flag is read, all-reduced, then written back: a signal whose handler runs in between (during
    the collective) must still stop the run at the next step boundary, not be overwritten by the older 0."""
    from ssa_pretrain import trainer as trainer_module

    trainer = trainer_module.Trainer.__new__(trainer_module.Trainer)
    trainer.stop_signal = 0
    trainer.dist = type("Dist", (), {"device": torch.device("cpu")})()

    def all_reduce_with_a_signal(flag, op=None):
        trainer._on_signal(signal.SIGUSR1, None)  # the handler runs while the ranks agree

    monkeypatch.setattr(trainer_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(trainer_module.dist, "all_reduce", all_reduce_with_a_signal)
    assert not trainer._agree_to_stop()  # this boundary's answer was taken before the signal
    monkeypatch.setattr(trainer_module.dist, "all_reduce", lambda flag, op=None: None)
    assert trainer._agree_to_stop()  # the next boundary stops
    assert trainer.stop_signal == signal.SIGUSR1


def test_resume_may_change_how_the_same_math_is_computed(tmp_path):
    """Kernel choices (fused element-wise ops, the fused loss) may change on resume, also from a checkpoint
    written before they were config keys."""
    cfg = tiny_config("train.cross_entropy=fused", "train.fused_elementwise=false")
    saved = tiny_config().model_dump(mode="json")
    del saved["train"]["cross_entropy"], saved["train"]["fused_elementwise"]  # an older checkpoint's config
    meta = {"config": saved, "tokenizer_sha256": "t", "dataset_sha256": "d", "step": 4}
    assert check_resumable(tmp_path, meta, cfg, "t", "d", allow_config_change=False) == {}
