"""tools/bench_cp.py for real on CPU (gloo, 2 ranks under torchrun, its smoke options): one JSON line per
length (printed and appended to --out) with every field, the profiled CP iterations' communication shares in
range, no memory numbers and the native-CP baseline recorded as skipped (CPU), and both tables printed; and
its one-process rank simulation (`--simulate`): every rank timed, the bytes of every transfer as the layout
implies them, the speed-ups from those times."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, free_port

FIELDS = {
    "device", "gpus", "date", "git", "torch", "seqlen", "cp_comm", "heads", "kv_heads", "block_size",
    "block_count",
    "full_1gpu_ms", "ssa_1gpu_ms", "full_cp_ms", "ssa_cp_ms", "ssa_speedup", "full_speedup",
    "full_1gpu_peak_gib", "ssa_1gpu_peak_gib", "full_cp_peak_gib", "ssa_cp_peak_gib", "full_cp_profile",
    "ssa_cp_profile", "native_backend", "native_rotate", "native_kv_heads", "native_1gpu_ms", "native_cp_ms",
    "native_speedup", "native_1gpu_peak_gib", "native_cp_peak_gib", "native_cp_profile", "native_error",
}  # fmt: skip
NATIVE_NUMBERS = ("native_backend", "native_1gpu_ms", "native_cp_ms", "native_speedup",
                  "native_1gpu_peak_gib", "native_cp_peak_gib", "native_cp_profile")  # fmt: skip


@pytest.mark.distributed
def test_cpu_smoke_run_writes_every_field(tmp_path):
    out = tmp_path / "bench_cp.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "tools/bench_cp.py", "--device", "cpu", "--seqlens", "256", "512",
               "--heads", "4", "--kv-heads", "2", "--block-count", "4", "--repeats", "1",
               "--out", str(out)]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["seqlen"] for line in lines] == [256, 512]
    printed = [json.loads(s) for s in proc.stdout.splitlines() if s.startswith("{")]
    assert printed == lines
    for line in lines:
        assert line.keys() == FIELDS, line.keys() ^ FIELDS
        assert (line["device"], line["gpus"], line["heads"], line["kv_heads"]) == ("cpu", 2, 4, 2)
        assert line["ssa_speedup"] == pytest.approx(line["ssa_1gpu_ms"] / line["ssa_cp_ms"])
        assert line["full_speedup"] == pytest.approx(line["full_1gpu_ms"] / line["full_cp_ms"])
        for op in ("full_cp", "ssa_cp"):
            p = line[f"{op}_profile"]
            assert p.keys() == {"profile_ms", "comm_share", "exposed_comm_share", "compute_share", "overlap"}
            assert p["profile_ms"] > 0 and 0 < p["comm_share"] <= 1 and 0 < p["compute_share"] <= 1
            assert 0 <= p["exposed_comm_share"] <= p["comm_share"]
            assert p["overlap"] == pytest.approx(1 - p["exposed_comm_share"] / p["comm_share"])
        for op in ("full_1gpu", "ssa_1gpu", "full_cp", "ssa_cp"):
            assert line[f"{op}_peak_gib"] is None  # GPU memory only
        assert line["native_error"].startswith("skipped") and line["native_kv_heads"] == 4
        assert all(line[k] is None for k in NATIVE_NUMBERS)
    assert proc.stdout.count("native context_parallel: skipped on CPU") == 1  # said once, by rank 0
    table = [s for s in proc.stdout.splitlines() if s.startswith("  seqlen") or s.startswith("     512 ")]
    assert len(table) == 4, proc.stdout  # the lines tools/gpu_multi.sh's summary picks: 2 headers, 2 rows


SIM_PER_OP = ("1gpu_ms", "rank_ms", "busiest_rank", "speedup", "exposed_ms", "speedup_exposed", "bytes",
              "bytes_total")  # fmt: skip
SIM_FIELDS = {
    "mode",
    "device",
    "date",
    "git",
    "torch",
    "seqlen",
    "cp",
    "cp_comm",
    "heads",
    "kv_heads",
    "head_dim",
    "block_size",
    "block_count",
    "link_gbps",
} | {f"{op}_{k}" for op in ("ssa", "full") for k in SIM_PER_OP}


def test_simulate_smoke_reports_every_rank_and_the_bytes(tmp_path):
    out = tmp_path / "sim.jsonl"
    seq_len, kv_heads, dim = 128, 2, 16
    command = [sys.executable, "tools/bench_cp.py", "--simulate", "2", "4", "--device", "cpu", "--seqlens",
               str(seq_len), "--heads", "4", "--kv-heads", str(kv_heads), "--head-dim", str(dim),
               "--block-count", "4", "--repeats", "1", "--cp-comm", "ring", "allgather",
               "--out", str(out)]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["cp"], r["cp_comm"]) for r in lines] == [
        (2, "ring"),
        (2, "allgather"),
        (4, "ring"),
        (4, "allgather"),
    ]
    for r in lines:
        assert r.keys() == SIM_FIELDS, r.keys() ^ SIM_FIELDS
        size = r["cp"]
        share = 2 * (seq_len // size) * kv_heads * dim * 4  # k and v of one rank, fp32 on CPU
        for op in ("ssa", "full"):
            times = r[f"{op}_rank_ms"]
            assert len(times) == size and all(t > 0 for t in times)
            assert r[f"{op}_speedup"] == pytest.approx(r[f"{op}_1gpu_ms"] / max(times))
            assert r[f"{op}_exposed_ms"] >= 0 and r[f"{op}_speedup_exposed"] <= r[f"{op}_speedup"]
            kv, dkv = r[f"{op}_bytes"]["kv"], r[f"{op}_bytes"]["dkv"]
            if r["cp_comm"] == "ring":  # P - 1 shifts forward and backward; the accumulators P shifts (fp32)
                assert (kv["transfers"], kv["bytes_each"], dkv["transfers"]) == (2 * (size - 1), share, size)
            else:  # one all-gather of the P - 1 other shares, one reduce-scatter of as many
                assert (kv["transfers"], kv["bytes_each"], dkv["bytes_each"]) == (
                    1,
                    (size - 1) * share,
                    (size - 1) * share,
                )
        assert ("means" in r["ssa_bytes"]) and "means" not in r["full_bytes"]  # selection: the block means
    assert proc.stdout.count(" allgather ") >= 2  # the table
