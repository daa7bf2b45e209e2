"""On GPUs (NCCL, bf16): every parameter gradient of the SSA model under TP / CP / DP layouts matches one GPU.

The GPU twin of `test_parallel_gradients.py`: `grad_worker.py` under torchrun with `--backend nccl --dtype
bfloat16` (one GPU per rank, parameters in bf16 as the trainer has them), a 4,096-token sequence so that
the CUDA paths run as in training — Triton block selection (256 blocks: several score segments; under CP
`select_blocks_from_means` against the all-gathered means), Triton sparse attention, cuDNN full attention,
the ring's NCCL send/receive — compared with the single-GPU run of the same worker in bf16.

Tolerance. bf16 keeps 8 significant bits; the layouts sum in other orders (TP: the row-parallel all-reduce
splits the hidden sums; CP: partials of each chunk rounded to bf16, then merged; GEMMs of other shapes), so
two correct runs differ by bf16 rounding, amplified where a near-tied block is selected in one run and not in
the other (sparse branch). A fixed fp32-style bound does not fit, so the bound is measured: the same worker
on one GPU in fp32 arithmetic from the same bf16-rounded weights (`--dtype float32 --bf16-weights`) gives
each tensor's bf16 arithmetic error `noise = |g_bf16 - g_fp32| / |g_fp32|` (relative norms per tensor). Two
correct bf16 runs are each about `noise` from the exact result, so they differ by at most about `2 * noise`
(triangle inequality); the bound is `max(2e-2, 2 * noise)` per gradient tensor, 2e-2 (~5 bf16 units of
roundoff) being the floor where `noise` is small. Measured on CPU (gloo, the bf16 references, 1,024 tokens,
TP2 / CP2): layout differences up to 1.02x `noise` (at most 0.5x the bound); `noise` 0.4-0.9 % in `full`,
0.5-4.6 % in `sparse` (selection flips). Set against the other mode's run (a wrong model), every gradient
fails, most by tens of percent: layout bugs (a chunk missing, a wrong position or gradient route) do so too.
Loss and alignment loss: `max(1e-3, 2 * noise)` and `max(1e-2, 2 * noise)`.

Each case's numbers go to the JSON-lines file `$SSA_GRAD_REPORT` when set (tools/gpu_multi.sh sets it).
Cases: 2 GPUs: TP2 (sparse), CP2 (full, sparse); 4: CP4, TP2xCP2 (full), DP2xCP2; 8: CP8, DP2xTP2xCP2. Cases
with more ranks than GPUs are skipped; on a machine without CUDA everything is skipped. The four one-GPU runs
(bf16 and fp32 twin, both modes) run side by side, one per GPU.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.distributed.grad_worker import LAYOUTS
from tests.helpers import REPO, free_port

SEQ_LEN, BATCH = 4096, 2  # 2: one sequence per data-parallel rank in DP=2 x CP=2
MODEL = ["model.head_dim=64", "ssa.block_size=16", "ssa.block_count=16"]  # the 1B model's head dim and budget
FLOOR = {"grad": 2e-2, "loss": 1e-3, "align": 1e-2}
NOISE_FACTOR = 2.0
BF16 = ["--backend", "nccl", "--dtype", "bfloat16"]
FP32_TWIN = ["--backend", "nccl", "--dtype", "float32", "--bf16-weights"]
TIMEOUT = int(os.environ.get("SSA_GRAD_TIMEOUT", "300"))  # seconds per worker launch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _worker(out: Path, nproc: int, mode: str, args: list[str], env: dict | None = None) -> dict:
    """Run grad_worker.py on `nproc` GPUs (torchrun) or one (plain python); its saved result."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                "--master-port", str(free_port())] if nproc > 1 else [sys.executable]  # fmt: skip
    command = [*launcher, "-m", "tests.distributed.grad_worker", "--mode", mode, "--out", str(out),
               "--seq-len", str(SEQ_LEN), "--batch", str(BATCH), *args, *MODEL]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # TERM, not KILL: torchrun ends its ranks (own sessions), no GPU stays busy
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        pytest.fail(f"timed out after {TIMEOUT} s: {' '.join(command)}\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"{' '.join(command)}\n{stderr[-4000:]}"
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def single_gpu(tmp_path_factory):
    """The one-GPU runs of both modes, bf16 and its fp32 twin, run together (one per GPU at a time)."""
    runs = [
        (mode, name, args)
        for mode in ("sparse", "full")
        for name, args in (("bf16", BF16), ("fp32", FP32_TWIN))
    ]
    folder = tmp_path_factory.mktemp("one-gpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    free = queue.Queue()  # the GPUs not in use by one of these runs
    for device in visible.split(",")[: _gpus()] if visible else range(_gpus()):
        free.put(str(device))

    def one(run: tuple[str, str, list[str]]) -> dict:
        mode, name, args = run
        device = free.get()
        try:
            return _worker(folder / f"{mode}-{name}.pt", 1, mode, args, {"CUDA_VISIBLE_DEVICES": device})
        finally:
            free.put(device)

    with ThreadPoolExecutor(max_workers=max(1, _gpus())) as pool:
        results = list(pool.map(one, runs))
    return {(mode, name): result for (mode, name, _), result in zip(runs, results, strict=True)}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| in the 2-norm, fp32."""
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(torch.finfo(torch.float32).tiny)).item()


def _compare(many: dict, one: dict, twin: dict) -> tuple[list[str], dict]:
    """The failures of `many` against `one` (bound: module docstring) and the numbers behind them."""
    failures, numbers = [], {}
    scalars = [
        ("loss", many["loss"], one["loss"], twin["loss"]),
        ("align", many["align"], one["align"], twin["align"]),
    ]
    for name, m, o, t in scalars:
        diff, noise = _relative(m, o), _relative(o, t)
        bound = max(FLOOR[name], NOISE_FACTOR * noise)
        numbers[name] = {"value": o.item(), "diff": diff, "noise": noise, "bound": bound}
        if not diff <= bound:
            failures.append(f"{name}: {m.item():.6g} vs {o.item():.6g}, relative {diff:.2e} > {bound:.2e}")
    if many["grads"].keys() != one["grads"].keys():
        return [
            *failures,
            f"parameters differ: {sorted(many['grads'].keys() ^ one['grads'].keys())}",
        ], numbers
    grads = {}
    for name, ref in one["grads"].items():
        got = many["grads"][name]
        if not (torch.isfinite(got).all() and torch.count_nonzero(ref) > 0):
            failures.append(f"{name}: non-finite gradient, or none in the one-GPU run")
            continue
        diff, noise = _relative(got, ref), _relative(ref, twin["grads"][name])
        bound = max(FLOOR["grad"], NOISE_FACTOR * noise)
        grads[name] = {"diff": diff, "noise": noise, "bound": bound}
        if not diff <= bound:
            failures.append(f"{name}: relative difference {diff:.2e} > {bound:.2e} (noise {noise:.2e})")
    numbers["grads"] = grads
    if grads:
        numbers["worst"] = max(grads, key=lambda n: grads[n]["diff"] / grads[n]["bound"])
        numbers["max_diff"] = max(g["diff"] for g in grads.values())
        numbers["max_diff_over_bound"] = max(g["diff"] / g["bound"] for g in grads.values())
    return failures, numbers


@pytest.mark.parametrize(
    ("nproc", "layout", "mode"),
    [
        pytest.param(
            *case, marks=pytest.mark.skipif(_gpus() < case[0], reason=f"needs {case[0]} GPUs"), id=name
        )
        for name, case in LAYOUTS.items()
    ],
)
def test_every_gradient_matches_one_gpu_bf16(single_gpu, tmp_path, request, nproc, layout, mode):
    many = _worker(tmp_path / "many.pt", nproc, mode, [*layout, *BF16])
    failures, numbers = _compare(many, single_gpu[(mode, "bf16")], single_gpu[(mode, "fp32")])
    report = os.environ.get("SSA_GRAD_REPORT")
    if report:
        line = {"case": request.node.callspec.id, "nproc": nproc, "mode": mode, "seq_len": SEQ_LEN,
                "device": torch.cuda.get_device_name(), "passed": not failures, **numbers}  # fmt: skip
        with open(report, "a") as f:
            f.write(json.dumps(line) + "\n")
    assert not failures, "\n".join(failures)
