"""tools/bench_scaling.py for real on CPU (gloo): the tiny model at 64 tokens on one process, on CP=2 and on
TP=2 under torchrun — the JSON lines carry every field, and the first 5 losses of CP=2 / TP=2 equal those of
one process within fp32 tolerance (`--compare`, as a user runs it). Plus the pure parts: the loss comparison's
verdicts and the communication shares of a profiled step."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from tests.helpers import REPO, build_tiny_dataset, free_port

TINY = ["--model", "configs/model/tiny.yaml", "--seqlens", "64", "--vocab-size", "0", "--warmup", "2",
        "--steps", "3", "ssa.block_size=8", "ssa.block_count=3"]  # fmt: skip
FIELDS = {
    "device", "date", "git", "config", "layout", "world_size", "tp", "cp", "dp", "seqlen", "global_batch",
    "grad_accum", "recompute", "cp_comm", "params", "step_ms", "step_ms_all", "tokens_per_s",
    "tokens_per_s_per_gpu", "peak_mem_gib", "losses", "ce", "sequence_modes",
}  # fmt: skip
PROFILE_FIELDS = {"profile_step_ms", "comm_share", "exposed_comm_share", "compute_share"}


def _bench(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                "--master-port", str(free_port())] if nproc > 1 else [sys.executable]  # fmt: skip
    return subprocess.run([*launcher, "tools/bench_scaling.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """One JSON lines file per run: `one` (1 process), `cp2`, `tp2`."""
    tmp = tmp_path_factory.mktemp("bench_scaling")
    data = build_tiny_dataset(tmp / "data")
    paths = {}
    for name, nproc, layout in (("one", 1, "cp"), ("cp2", 2, "cp"), ("tp2", 2, "tp2-cp")):
        paths[name] = tmp / f"{name}.jsonl"
        proc = _bench(*TINY, "--layout", layout, "--run-dir", str(tmp / "runs"), "--out", str(paths[name]),
                      f"data.dir={data}", f"data.tokenizer={data / 'tokenizer'}", nproc=nproc)  # fmt: skip
        assert proc.returncode == 0, f"{name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return paths


def _line(path) -> dict:
    (line,) = path.read_text().splitlines()
    return json.loads(line)


@pytest.mark.distributed
def test_lines_hold_every_field(results):
    one, cp2, tp2 = (_line(results[k]) for k in ("one", "cp2", "tp2"))
    for line in (one, cp2, tp2):
        assert line.keys() >= FIELDS, FIELDS - line.keys()
        assert line["device"] == "cpu" and line["seqlen"] == 64 and line["global_batch"] == 2
        assert len(line["losses"]) == len(line["step_ms_all"]) == 5
        assert line["tokens_per_s"] == pytest.approx(2 * 64 / (line["step_ms"] / 1e3))
    assert (one["world_size"], one["cp"], one["grad_accum"]) == (1, 1, 2) and not PROFILE_FIELDS & one.keys()
    assert (cp2["tp"], cp2["cp"], cp2["dp"]) == (1, 2, 1) and (tp2["tp"], tp2["cp"], tp2["dp"]) == (2, 1, 1)
    for line in (cp2, tp2):
        assert line.keys() >= PROFILE_FIELDS
        assert 0 < line["comm_share"] <= 1 and 0 <= line["exposed_comm_share"] <= line["comm_share"]
        assert line["tokens_per_s_per_gpu"] == pytest.approx(line["tokens_per_s"] / 2)


@pytest.mark.distributed
def test_first_losses_of_cp2_and_tp2_match_one_process(results, tmp_path):
    both = tmp_path / "both.jsonl"
    both.write_text(results["cp2"].read_text() + results["tp2"].read_text())
    # fp32: CP and TP only reorder sums
    compare = ["--compare", str(results["one"]), str(both), "--rtol", "1e-5"]
    proc = subprocess.run([sys.executable, "tools/bench_scaling.py", *compare], cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert proc.stdout.count("match") == 2, proc.stdout


@pytest.fixture
def bench_scaling(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    return importlib.import_module("bench_scaling")


def test_compare_verdicts(bench_scaling):
    ref = {
        "config": "c",
        "seqlen": 64,
        "losses": [2.0, 1.5, 1.2],
        "sequence_modes": [["full"], ["sparse"]] * 2,
    }
    other = {**ref, "layout": "cp", "world_size": 2}
    close = {**other, "losses": [2.0, 1.5, 1.2 * (1 + 1e-4)]}
    far = {**other, "losses": [2.0, 1.6, 1.2]}
    modes = {**other, "sequence_modes": [["sparse"], ["sparse"], ["full"]]}
    longer = {**other, "seqlen": 128}
    results = bench_scaling.compare([ref], [close, far, modes, longer], first=3, rtol=1e-3)
    assert [r["verdict"].split(":")[0].split(" (")[0] for r in results] == [
        "match", "DIFFER", "not comparable", "no reference line with the same model, length and batch"
    ]  # fmt: skip
    assert results[1]["max_rel_diff"] == pytest.approx(0.1 / 1.5)


def test_communication_shares_count_nccl_kernels_and_what_compute_does_not_hide(bench_scaling):
    def kernel(name: str, start: float, end: float) -> SimpleNamespace:
        return SimpleNamespace(
            name=name, device_type=DeviceType.CUDA, time_range=SimpleNamespace(start=start, end=end)
        )

    events = [
        kernel("ncclDevKernel_SendRecv", 0, 40),  # 0-10 alone, 10-40 under compute
        kernel("sm90_gemm", 10, 50),
        kernel("ncclDevKernel_AllReduce", 45, 70),  # 50-60 and 65-70 alone
        kernel("flash_fwd", 60, 65),
        SimpleNamespace(
            name="aten::mm", device_type=DeviceType.CPU, time_range=SimpleNamespace(start=0, end=100)
        ),
    ]
    shares = bench_scaling.communication_shares(events, step_us=100, cuda=True)
    assert shares == pytest.approx({"comm_share": 0.65, "exposed_comm_share": 0.25, "compute_share": 0.45})
