"""End-to-end training on CPU, run the way users run it: `python -m ssa_pretrain.train` and `torchrun`.

Resume equality, data-parallel equivalence, signals, bad input and non-finite losses.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssa_pretrain.cli import main as ssa_main
from ssa_pretrain.data.tokenizer import Tokenizer
from tests.helpers import REPO, read_metrics, train_command

FAST = [
    "data.seq_len=64",
    "ssa.block_size=8",
    "ssa.block_count=2",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "train.log_interval=1",
    "train.eval_interval=4",
    "train.eval_batches=2",
    "train.save_interval=4",
    "logging.wandb=disabled",
    "logging.progress=false",
]


# bf16 weights with fp32 gradient accumulation: DeepSpeed's BF16 optimizer (the one-GPU recipe's), a path of
# its own that fp32 runs never take.
BF16_FP32_GRADS = ("train.precision=bf16", "train.deepspeed_config=configs/deepspeed/zero1-fp32-grads.json")


def zero_optimizer_keys(run_dir, step: int) -> set[str]:
    """The keys of DeepSpeed's optimizer state in a checkpoint: which wrapper wrote it (its ZeRO optimizer
    keeps a loss scaler, the BF16 optimizer none), read as resume reads it."""
    from ssa_pretrain.checkpoint import safe_load

    (path,) = (Path(run_dir) / f"checkpoints/step-{step:06d}").glob("*optim_states.pt")
    return set(safe_load(path)["optimizer_state_dict"])


def run(run_dir, data, *overrides, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        train_command(run_dir, nproc, *FAST, f"data.dir={data}", *overrides),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def losses(run_dir) -> list[float]:
    return [m["loss"] for m in read_metrics(run_dir)]


def test_trains_writes_metrics_checkpoint_and_config(tiny_data, tmp_path):
    run(tmp_path / "run", tiny_data, "train.steps=8", "train.save_interval=2", "train.keep_last=2")
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert {"loss", "ce", "align", "mode", "lr", "grad_norm", "tokens_per_s", "peak_mem_gib"} <= metrics[
        0
    ].keys()
    assert {"val_loss_full", "val_loss_sparse"} <= metrics[3].keys() and "val_loss_full" in metrics[-1]
    assert metrics[-1]["ce"] < metrics[0]["ce"]
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step-000008"
    kept = sorted(p.name for p in (tmp_path / "run/checkpoints").glob("step-*"))
    assert kept == ["step-000006", "step-000008"]  # keep_last=2
    assert json.loads((tmp_path / "run/status.json").read_text())["state"] == "completed"
    assert "seq_len: 64" in (tmp_path / "run/config.yaml").read_text()
    assert Tokenizer(tmp_path / "run/tokenizer").sha256 == Tokenizer(tiny_data / "tokenizer").sha256
    assert ssa_main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("precision", [(), BF16_FP32_GRADS], ids=["fp32", "bf16-fp32-grads"])
def test_resume_after_signal_repeats_the_uninterrupted_losses(tiny_data, tmp_path, precision):
    steps = ["train.steps=10", "train.save_interval=100", *precision]
    straight = run(tmp_path / "straight", tiny_data, *steps)
    assert "Max_MA" not in straight.stdout  # the BF16 optimizer's start-up memory prints are swallowed

    # Interrupt a second run with SIGUSR1 once it has logged two steps: it saves at the step boundary.
    cmd = train_command(tmp_path / "split", 1, *FAST, f"data.dir={tiny_data}", *steps)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics_file = tmp_path / "split/metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics_file.is_file() and len(metrics_file.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    status = json.loads((tmp_path / "split/status.json").read_text())
    assert status["state"] == "stopped" and 2 <= status["step"] < 10, status

    run(tmp_path / "split", tiny_data, *steps)  # the same command resumes
    assert [m["step"] for m in read_metrics(tmp_path / "split")] == list(range(1, 11))
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    assert ("loss_scaler" in zero_optimizer_keys(tmp_path / "split", 10)) == (precision != BF16_FP32_GRADS)


@pytest.fixture(scope="module")
def single_process_run(tiny_data, tmp_path_factory):
    """The one-process run of some overrides, trained once per module and shared by the layouts."""
    runs: dict[tuple[str, ...], list[dict]] = {}

    def metrics_of(*overrides: str) -> list[dict]:
        if overrides not in runs:
            run_dir = tmp_path_factory.mktemp("one")
            run(run_dir, tiny_data, *overrides)
            runs[overrides] = read_metrics(run_dir)
        return runs[overrides]

    return metrics_of


SSA_FULL, SSA_SPARSE = ("ssa.full_ratio=1.0",), ("ssa.full_ratio=0.0",)


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("nproc", "layout", "method"),
    [
        (2, [], SSA_SPARSE),
        (2, [], SSA_FULL),
        (2, ["train.deepspeed_config=configs/deepspeed/zero2.json"], SSA_SPARSE),
        (2, [], (*SSA_SPARSE, *BF16_FP32_GRADS)),
        (2, ["parallel.tp=2"], SSA_SPARSE),
        (2, ["parallel.tp=2"], SSA_FULL),
        (2, ["parallel.cp=2"], SSA_SPARSE),
        (2, ["parallel.cp=2"], SSA_FULL),
        (2, ["parallel.cp=2"], ("ssa.variant=sparse",)),
        (2, ["parallel.cp=2"], ("ssa.variant=full",)),
        (4, ["parallel.cp=4", "parallel.cp_comm=ring"], SSA_SPARSE),
        (4, ["parallel.tp=2", "parallel.cp=2", "parallel.cp_comm=ring"], SSA_FULL),
        (4, ["parallel.cp=2"], SSA_SPARSE),  # DP=2 x CP=2
        (2, ["parallel.tp=2", "parallel.sequence_parallel=true"], SSA_SPARSE),
        (4, ["parallel.tp=2", "parallel.cp=2", "parallel.sequence_parallel=true"], SSA_FULL),
    ],
    ids=[
        "dp2-ssa-sparse", "dp2-ssa-full", "dp2-zero2", "dp2-bf16-fp32-grads", "tp2-ssa-sparse",
        "tp2-ssa-full", "cp2-ssa-sparse", "cp2-ssa-full", "cp2-sparse-only", "cp2-full-only",
        "cp4-ring-ssa-sparse", "tp2xcp2-ring-ssa-full", "dp2xcp2-ssa-sparse", "tp2-sp-ssa-sparse",
        "tp2xcp2-sp-ssa-full",
    ],
)  # fmt: skip
def test_parallel_layouts_equal_one_process(single_process_run, tiny_data, tmp_path, nproc, layout, method):
    """The same global batch on several ranks as on one: data parallel (micro 2 without accumulation vs micro
    2 with two accumulation steps), tensor parallel (heads and MLP sharded; with sequence parallelism the
    norms and residual stream split by tokens too, so the norm-weight gradients must be summed over TP),
    context parallel (the sequence sharded in the load-balanced layout; keys/values all-gathered by default,
    the ring where a case says so) and their products give the losses, alignment losses, gradient norms and
    validation losses of one process. With full_ratio 0 / 1 every micro-step has the same mode in every
    layout; in `ssa` both branches and the alignment loss run each step. In bf16 with DeepSpeed's BF16
    optimizer, two ranks' fp32 gradients all-reduced equal one rank's two accumulated micro-steps."""
    common = ("train.steps=4", *method)
    one = single_process_run(*common)
    run(tmp_path / "many", tiny_data, *common, *layout, nproc=nproc)
    many = read_metrics(tmp_path / "many")
    for key in ("loss", "ce", "align", "grad_norm"):
        assert [m[key] for m in many] == pytest.approx([m[key] for m in one], rel=2e-5, abs=1e-6), key
    for key in ("val_loss_full", "val_loss_sparse"):
        assert many[-1][key] == pytest.approx(one[-1][key], rel=2e-5), key


def test_bad_config_fails_before_anything_is_written(tiny_data, tmp_path):
    proc = run(tmp_path / "run", tiny_data, "ssa.block_count=0", "train.stesp=3", check=False)
    assert proc.returncode == 2
    assert (
        "ssa.block_count" in proc.stderr and "train.stesp: unknown key (did you mean 'steps'?)" in proc.stderr
    )
    assert not (tmp_path / "run").exists()


def test_resume_with_a_different_model_is_refused(tiny_data, tmp_path):
    run(tmp_path / "run", tiny_data, "train.steps=4")
    proc = run(tmp_path / "run", tiny_data, "train.steps=6", "model.num_layers=2", check=False)
    assert proc.returncode == 2
    assert "model.num_layers: checkpoint 4, config 2" in proc.stderr
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step-000004"  # nothing lost


def test_dangling_latest_pointer_is_reported(tiny_data, tmp_path):
    run(tmp_path / "run", tiny_data, "train.steps=4")
    (tmp_path / "run/checkpoints/latest").write_text("step-000099")
    proc = run(tmp_path / "run", tiny_data, "train.steps=6", check=False)
    assert proc.returncode == 2 and "step-000099" in proc.stderr and "incomplete or was moved" in proc.stderr


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_shard_is_named(tiny_data, tmp_path, damage):
    """A truncated shard fails at start (size check); a flipped byte when the shard is read (sha256), before
    any of its tokens reach the model."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    shards = sorted((data / "train").glob("*.tar"))
    for shard in shards if damage == "flip" else shards[:1]:
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        shard.write_bytes(bytes(raw) if damage == "flip" else bytes(raw[:-1000]))
    proc = run(tmp_path / "run", data, "train.steps=2", check=False)
    assert proc.returncode == 2
    assert any(s.name in proc.stderr for s in shards), proc.stderr[-2000:]
    if damage == "flip":  # found once training runs: the run is marked failed, with the shard named
        status = json.loads((tmp_path / "run/status.json").read_text())
        assert status["state"] == "failed" and any(s.name in status["reason"] for s in shards), status


def test_cli_help_documents_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "ssa_pretrain.cli", "--help"], capture_output=True, text=True
    ).stdout
    for command in ("train", "data", "params"):
        assert command in out
