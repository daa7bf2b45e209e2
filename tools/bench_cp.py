"""One layer's SSA attention, forward + backward, on one GPU and context-parallel over all GPUs of the job.

Per sequence length: the single-GPU time of cuDNN full attention (the baseline) and of SSA training attention
(both branches, `ssa_kernels`), and the context-parallel time of the same SSA attention (ring over all ranks:
`context_parallel_ssa_attention`) and of full attention alone (`context_parallel_full_attention`). Speed-up =
single-GPU SSA time / CP SSA time; the target is >= 1.85x at 64K and >= 1.9x at 128K on 2 GPUs.
Shape: bf16, 32 query heads, 2 kv heads, head dim 64, block size 16, 16 blocks, batch 1.

Next to it, in the same run (CUDA only; skipped on CPU, where PyTorch's ring has no SDPA kernel): PyTorch's
own ring attention, `torch.distributed.tensor.experimental.context_parallel` as torchtitan drives it, for
full causal attention, and its single-GPU SDPA at the same length for its speed-up. Its shape is that of
its reference measurement in docs/SCALING.md (32 heads x 64, kv heads = query heads, `[1, heads, T, 64]`
bf16), which every SDPA backend runs (SDPA's GQA is flash / math only, and untried in PyTorch's ring);
attention FLOPs equal ours, its K/V traffic is heads / kv_heads times ours. Like torchtitan, the context
manager shards the sequence's token positions (its `buffers`, sequence dim 0, not restored); each rank builds
its q/k/v rows from them (PyTorch's head-tail load balancing: rank r holds chunks r and 2P-1-r, as ours) and
calls `F.scaled_dot_product_attention(is_causal=True)` inside the context, forward and backward, under
`sdpa_kernel(backend)`: the first of `--native-backends` that runs is timed (the reference measurement is
cuDNN's). K/V rotation: `--native-rotate` (PyTorch's default `allgather`, or `alltoall`). A failure there is
recorded in `native_error` and does not touch our numbers.

Also per op: peak memory per rank (`torch.cuda.max_memory_allocated`, reset before each op; it includes the
op's inputs: whole q/k/v on one GPU, this rank's shards under CP), and for each CP op one more iteration
under `torch.profiler`, read by `bench_scaling.communication_shares` (NCCL kernels as communication, every
other kernel as compute; gloo / aten:: events on CPU): `comm_share`, `exposed_comm_share` (communication
no compute overlaps), `compute_share` of that iteration's wall time, means over ranks, and `overlap` = the
part of the communication time that compute hides (1 - exposed / comm). Each length's JSON line is printed
(and appended to `--out`) as soon as it is measured; the tables come at the end.

`--cp-comm ring|allgather` picks how our CP ops reach the other ranks' keys (`parallel.cp_comm`).

    torchrun --nproc-per-node 2 tools/bench_cp.py --seqlens 65536 131072 --out docs/perf/bench_cp.jsonl
    torchrun --nproc-per-node 2 tools/bench_cp.py --device cpu --seqlens 1024 --heads 4 --kv-heads 2  # smoke

**One-GPU rank simulation** (`--simulate P [P ...]`, one process, no process group): for each `P` and each
`--cp-comm` value, the process plays every rank `r` of a `P`-rank group in turn and runs exactly rank `r`'s
work of one SSA layer (selection, both branches, forward and backward; and of full attention alone): its
chunks, every ring step or the gather path, with every transfer replaced by a local copy of the same bytes
(`ssa_pretrain.parallel.collectives.SimulatedComm`, which hands out the real peers' data, so the sparse
branch skips the same ring steps as on `P` GPUs). Reported per line: each simulated rank's compute time and
the busiest one's (`*_rank_ms`), the bytes each transfer would move (`bytes`: per kind, per transfer; and
the total per rank), `*_speedup` = t(1 GPU, whole sequence) / t(busiest rank) — an upper bound, reached
once the transfers hide behind compute — and, from one more run of the busiest rank with a timestamp at
every transfer and wait, the time the transfers would leave exposed on a link of `--link-gbps` GB/s per
direction (default 300: an H200's NVLink 4 has 450 GB/s per direction nominal; NCCL's point-to-point
reaches about two thirds of it) and `*_speedup_exposed` = t(1 GPU) / (t(rank) + exposed).

    python tools/bench_cp.py --simulate 2 4 8 --seqlens 65536 131072 --out OUT/bench_cp_sim.jsonl
    python tools/bench_cp.py --simulate 2 --device cpu --seqlens 256 --heads 4 --kv-heads 2 --block-count 4
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ssa_kernels
import torch
import torch.distributed as dist
import torch.nn.functional as F
from bench_info import git_commit
from bench_scaling import communication_shares
from ssa_kernels.select_blocks.naive import block_means
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.profiler import ProfilerActivity, profile

from ssa_pretrain.parallel import (
    CP_COMM,
    context_parallel_full_attention,
    context_parallel_ssa_attention,
    split_sequence,
)
from ssa_pretrain.parallel.collectives import SimulatedComm

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Sequence[torch.Tensor]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], repeats: int, device: torch.device, collective: bool = True) -> float:
    """Median milliseconds of `fn` after one warm-up; `collective`: all ranks call it, in step."""
    times = []
    for i in range(repeats + 1):
        if collective:
            dist.barrier()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def measure(
    fn: Callable[[], None], repeats: int, device: torch.device, collective: bool = True
) -> tuple[float, float | None]:
    """`timed`, and this rank's peak allocated GPU memory (GiB) over those calls; `None` on CPU."""
    if device.type != "cuda":
        return timed(fn, repeats, device, collective), None
    torch.cuda.reset_peak_memory_stats(device)
    ms = timed(fn, repeats, device, collective)
    return ms, torch.cuda.max_memory_allocated(device) / 2**30


def per_rank(value: float | None, device: torch.device) -> list[float] | None:
    """Every rank's `value` (all ranks call this), in rank order; `None` where it is `None` (CPU)."""
    if value is None:
        return None
    values = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(values, torch.tensor([value], dtype=torch.float64, device=device))
    return [v.item() for v in values]


def profiled(fn: Callable[[], None], device: torch.device) -> dict[str, float | None]:
    """One more call of `fn` (all ranks) under `torch.profiler`: its wall time and communication shares
    (`bench_scaling.communication_shares`), means over ranks, and `overlap` = 1 - exposed / communication."""
    cuda = device.type == "cuda"
    dist.barrier()
    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        start = time.perf_counter()
        fn()
        _sync(device)
        wall_us = (time.perf_counter() - start) * 1e6
    shares = communication_shares(prof.events(), wall_us, cuda)
    values = torch.tensor([wall_us / 1e3, *shares.values()], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    ms, *mean = (values / dist.get_world_size()).tolist()
    means = dict(zip(shares, mean, strict=True))
    comm, exposed = means["comm_share"], means["exposed_comm_share"]
    return {"profile_ms": ms, **means, "overlap": 1 - exposed / comm if comm else None}


def fwd_bwd(attention: Attention, q, k, v) -> Callable[[], None]:
    """A closure running `attention(q, k, v)` forward and backward (outputs summed as the loss)."""

    def run() -> None:
        for t in (q, k, v):
            t.grad = None
        outputs = attention(q, k, v)
        loss = sum(o.float().sum() for o in outputs)
        loss.backward()

    return run


# ------------------------------------------------------------------ PyTorch's native context parallelism

NATIVE_BACKENDS = ("cudnn", "flash", "efficient")
NATIVE_CPU_SKIP = "skipped on CPU: PyTorch's ring runs the CUDA SDPA kernels only (cuDNN / flash / efficient)"


def sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor]:
    """Causal SDPA, looked up at call time: inside `context_parallel`, the CP-patched function."""
    return (F.scaled_dot_product_attention(q, k, v, is_causal=True),)


def sdpa_inputs(
    host: Sequence[torch.Tensor], rows: torch.Tensor | slice, heads: int, device: torch.device
) -> list[torch.Tensor]:
    """SDPA's q, k, v (`[1, heads, rows, D]` bf16 leaves on `device`) from the host tensors' rows `rows`
    (`[1, T, H, D]`; k/v heads repeated up to `heads`)."""
    out = []
    for t in host:
        t = t[:, rows].to(device, torch.bfloat16)
        out.append(t.repeat_interleave(heads // t.shape[2], dim=2).transpose(1, 2).contiguous())
    return [t.requires_grad_() for t in out]


@functools.cache
def world_mesh(world: int) -> DeviceMesh:
    """The 1-D CUDA mesh of all `world` ranks, made once."""
    return init_device_mesh("cuda", (world,))


def native_numbers(
    host: Sequence[torch.Tensor], args: argparse.Namespace, backend: str, device: torch.device, rank: int
) -> dict[str, Any]:
    """PyTorch's ring attention over all ranks with SDPA `backend`, then (rank 0) its single-GPU SDPA."""
    from torch.distributed.tensor.experimental import context_parallel  # prototype API: errors stay here
    from torch.distributed.tensor.experimental._attention import set_rotate_method
    from torch.nn.attention import SDPBackend, sdpa_kernel

    world, seq_len = dist.get_world_size(), host[0].shape[1]
    kernel = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]  # fmt: skip
    set_rotate_method(args.native_rotate)
    positions = torch.arange(seq_len, device=device)  # sharded in place, as torchtitan's token ids
    with (
        sdpa_kernel(kernel),
        context_parallel(
            world_mesh(world), buffers=[positions], buffer_seq_dims=[0], no_restore_buffers={positions}
        ),
    ):
        run = fwd_bwd(sdpa_causal, *sdpa_inputs(host, positions.cpu(), args.heads, device))
        cp_ms, cp_peak = measure(run, args.repeats, device)
        numbers: dict[str, Any] = {"native_cp_ms": cp_ms, "native_cp_profile": profiled(run, device)}
        del run
    numbers["native_cp_peak_gib"] = per_rank(cp_peak, device)
    if rank == 0:
        with sdpa_kernel(kernel):
            run = fwd_bwd(sdpa_causal, *sdpa_inputs(host, slice(None), args.heads, device))
            numbers["native_1gpu_ms"], numbers["native_1gpu_peak_gib"] = measure(
                run, args.repeats, device, collective=False
            )
        numbers["native_speedup"] = numbers["native_1gpu_ms"] / cp_ms
    return numbers


def native_baseline(
    host: Sequence[torch.Tensor], args: argparse.Namespace, device: torch.device, rank: int
) -> dict[str, Any]:
    """`native_numbers` with the first of `--native-backends` that runs on every rank; the failures'
    messages in `native_error` (`None` when the first backend ran)."""
    result: dict[str, Any] = {
        "native_backend": None, "native_rotate": args.native_rotate, "native_kv_heads": args.heads,
        "native_1gpu_ms": None, "native_cp_ms": None, "native_speedup": None, "native_1gpu_peak_gib": None,
        "native_cp_peak_gib": None, "native_cp_profile": None, "native_error": None,
    }  # fmt: skip
    if device.type != "cuda":
        result["native_error"] = NATIVE_CPU_SKIP
        return result
    errors = []
    for backend in args.native_backends:
        try:
            numbers, error = native_numbers(host, args, backend, device, rank), None
        except Exception as e:  # a prototype API on a new torch: keep our numbers, say what failed
            numbers, error = {}, f"{backend}: {type(e).__name__}: {e}"[:1000]
        torch.cuda.empty_cache()
        ok = torch.tensor([error is None], dtype=torch.int32, device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank moves on to the same backend
        if ok.item():
            result.update(numbers, native_backend=backend)
            break
        errors.append(error or f"{backend}: failed on another rank")
    result["native_error"] = "; ".join(errors) or None
    return result


# --------------------------------------------------------------------------------- one-GPU rank simulation


@dataclasses.dataclass
class TimedComm(SimulatedComm):
    """`SimulatedComm` that also logs `[kind, bytes, issued, waited]` (seconds; device synchronised) for every
    transfer: a shift is waited at its `wait`, a gather or reduce-scatter at once (the caller needs it)."""

    device: torch.device | None = None
    log: list[list] = dataclasses.field(default_factory=list)

    def _now(self) -> float:
        if self.device is not None:
            _sync(self.device)
        return time.perf_counter()

    def _record(self, issued: float, waited: float | None) -> list[int]:
        kind, nbytes = self.moved[-1]
        self.log.append([kind, nbytes, issued, waited])
        return [len(self.log) - 1]

    def shift(self, send, kind, step):
        issued = self._now()
        recv, _ = super().shift(send, kind, step)
        return recv, self._record(issued, None)

    def wait(self, handle):
        for i in handle:
            self.log[i][3] = self._now()

    def all_gather(self, x, kind):
        issued = self._now()
        out = super().all_gather(x, kind)
        self._record(issued, issued)
        return out

    def reduce_scatter(self, x):
        issued = self._now()
        out = super().reduce_scatter(x)
        self._record(issued, issued)
        return out


def exposed_seconds(log: list[list], link_bytes_per_s: float) -> float:
    """The time the logged transfers would stall the rank: each runs on one link (one direction, transfers
    one after the other) from its issue; a wait before it is done stalls the rank (and everything after) by
    the difference. Compute between the timestamps is what the transfers hide behind."""
    stall, link_free = 0.0, 0.0
    for _, nbytes, issued, waited in sorted(log, key=lambda e: e[2]):
        start = max(issued + stall, link_free)
        link_free = start + nbytes / link_bytes_per_s
        waited = issued if waited is None else waited
        stall += max(0.0, link_free - (waited + stall))
    return stall


def simulated_rank(
    whole: Sequence[torch.Tensor],
    rank: int,
    size: int,
    op: str,
    comm: str,
    args: argparse.Namespace,
    timed_log: bool = False,
) -> tuple[Callable[[], None], Callable[[], SimulatedComm]]:
    """Rank `rank`'s forward + backward of `op` (`"ssa"`: selection + both branches; `"full"`) over a
    `SimulatedComm` that hands out the real peers' shares (from `whole`: q, k, v of the sequence, on the
    device), and a getter of the last call's comm."""
    bs, kk = args.block_size, args.block_count
    device = whole[0].device
    shares = [[split_sequence(t, p, size, dim=1, block_size=bs) for t in whole] for p in range(size)]
    kv = [torch.stack([k, v]) for _, k, v in shares]  # what rank p sends: its key/value share
    means = [block_means(k.float(), bs) for _, k, _ in shares]  # what rank p all-gathers for selection

    def peer(kind: str, p: int, x: torch.Tensor) -> torch.Tensor:
        return {"kv": kv[p], "means": means[p]}.get(kind, x)  # dkv: only its bytes matter

    made: list[SimulatedComm] = []

    def attention(q, k, v):
        channel = TimedComm(rank, size, peer, device=device) if timed_log else SimulatedComm(rank, size, peer)
        made.append(channel)
        if op == "full":
            return context_parallel_full_attention(q, k, v, channel, comm=comm)
        return [o for o, _ in context_parallel_ssa_attention(q, k, v, bs, kk, channel, comm=comm)]

    local = [t.clone().requires_grad_() for t in shares[rank]]
    return fwd_bwd(attention, *local), lambda: made[-1]


def simulate(args, device: torch.device) -> list[dict[str, Any]]:
    """`--simulate`: per length, the single-GPU times, then per P and comm every rank's time, the busiest
    rank's exposed transfers and the speed-ups (module docstring); one JSON line each."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    bs, kk = args.block_size, args.block_count
    rows = []
    for seq_len in args.seqlens:
        gen = torch.Generator(device="cpu").manual_seed(seq_len)
        host = [torch.randn(1, seq_len, h, args.head_dim, generator=gen) for h in
                (args.heads, args.kv_heads, args.kv_heads)]  # fmt: skip
        whole = [t.to(device, dtype, copy=True) for t in host]
        del host
        one = {}
        for op, attention in (("full", ssa_kernels.full_attention), ("ssa", one_gpu_ssa(bs, kk))):
            leaves = [t.clone().requires_grad_() for t in whole]
            one[op] = timed(fwd_bwd(attention, *leaves), args.repeats, device, collective=False)
            del leaves
        for size in args.simulate:
            for comm in args.cp_comm:
                row: dict[str, Any] = {
                    "mode": "simulate", "device": torch.cuda.get_device_name() if cuda else "cpu",
                    "date": datetime.date.today().isoformat(), "git": git_commit(),
                    "torch": torch.__version__, "seqlen": seq_len, "cp": size, "cp_comm": comm,
                    "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim,
                    "block_size": bs, "block_count": kk, "link_gbps": args.link_gbps,
                }  # fmt: skip
                for op in ("ssa", "full"):
                    times = []
                    for rank in range(size):
                        run, _ = simulated_rank(whole, rank, size, op, comm, args)
                        times.append(timed(run, args.repeats, device, collective=False))
                        del run
                    busiest = max(range(size), key=times.__getitem__)
                    run, last = simulated_rank(whole, busiest, size, op, comm, args, timed_log=True)
                    run()
                    log = last().log
                    exposed_ms = exposed_seconds(log, args.link_gbps * 1e9) * 1e3
                    per_kind: dict[str, list[int]] = {}
                    for kind, nbytes, *_ in log:
                        per_kind.setdefault(kind, []).append(nbytes)
                    row.update({
                        f"{op}_1gpu_ms": one[op], f"{op}_rank_ms": times, f"{op}_busiest_rank": busiest,
                        f"{op}_speedup": one[op] / times[busiest],
                        f"{op}_exposed_ms": exposed_ms,
                        f"{op}_speedup_exposed": one[op] / (times[busiest] + exposed_ms),
                        f"{op}_bytes": {k: {"transfers": len(v), "bytes_each": max(v), "total": sum(v)}
                                        for k, v in per_kind.items()},
                        f"{op}_bytes_total": sum(nbytes for _, nbytes, *_ in log),
                    })  # fmt: skip
                    del run
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                if cuda:
                    torch.cuda.empty_cache()
    print(f"{'seqlen':>8} {'P':>2} {'comm':>9} " + " ".join(
        f"{op + ' 1':>9} {op + ' rank':>9} {'x':>6} {'x exp.':>6}" for op in ("ssa", "full")
    ) + f"   (ms fwd+bwd; link {args.link_gbps} GB/s per direction)")  # fmt: skip
    for r in rows:
        print(f"{r['seqlen']:8d} {r['cp']:2d} {r['cp_comm']:>9} " + " ".join(
            f"{r[op + '_1gpu_ms']:9.1f} {max(r[op + '_rank_ms']):9.1f} {r[op + '_speedup']:6.2f} "
            f"{r[op + '_speedup_exposed']:6.2f}" for op in ("ssa", "full")
        ))  # fmt: skip
    return rows


def one_gpu_ssa(bs: int, kk: int) -> Attention:
    """One SSA layer on one GPU: selection, then both branches."""

    def both(a, b, c):
        idx = ssa_kernels.select_blocks(a, b, bs, kk)
        return ssa_kernels.full_attention(a, b, c)[0], ssa_kernels.sparse_attention(a, b, c, idx, bs)[0]

    return both


# ------------------------------------------------------------------------------------------------ main


def _cell(value: float | list[float] | None, width: int, spec: str) -> str:
    """`value` (a list: its largest) formatted, or `-`."""
    if isinstance(value, list):
        value = max(value)
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"


def print_tables(rows: list[dict[str, Any]]) -> None:
    """Times and speed-ups; then peak memory (largest rank) and each CP ring's exposed comm / overlap."""
    print(f"{'seqlen':>8} {'full 1':>9} {'full CP':>9} {'SSA 1':>9} {'SSA CP':>9} {'SSA x':>6} "
          f"{'SDPA 1':>9} {'native CP':>9} {'nat. x':>6}   (ms, fwd+bwd)")  # fmt: skip
    for r in rows:
        print(f"{r['seqlen']:8d} {r['full_1gpu_ms']:9.1f} {r['full_cp_ms']:9.1f} {r['ssa_1gpu_ms']:9.1f} "
              f"{r['ssa_cp_ms']:9.1f} {r['ssa_speedup']:6.2f} {_cell(r['native_1gpu_ms'], 9, '.1f')} "
              f"{_cell(r['native_cp_ms'], 9, '.1f')} {_cell(r['native_speedup'], 6, '.2f')}")  # fmt: skip
    ops, rings = (
        ("full_1gpu", "full_cp", "ssa_1gpu", "ssa_cp", "native_1gpu", "native_cp"),
        ("full_cp", "ssa_cp", "native_cp"),
    )
    print(f"{'seqlen':>8} " + " ".join(f"{op:>11}" for op in ops) + "  |"
          + " ".join(f"{op:>11}" for op in rings) + "   (peak GiB | exposed comm / overlap)")  # fmt: skip
    for r in rows:
        profiles = [r[f"{op}_profile"] or {} for op in rings]
        print(f"{r['seqlen']:8d} " + " ".join(_cell(r[f"{op}_peak_gib"], 11, ".2f") for op in ops) + "  |"
              + " ".join(f"{_cell(p.get('exposed_comm_share'), 6, '.1%')}/{_cell(p.get('overlap'), 4, '.0%')}"
                         for p in profiles))  # fmt: skip
    for r in rows:
        if r["native_error"]:
            print(f"native CP at {r['seqlen']}: {r['native_error']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seqlens", type=int, nargs="+", default=[65536, 131072])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--block-count", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument(
        "--native-backends", nargs="+", choices=NATIVE_BACKENDS, default=["cudnn", "flash"],
        help="SDPA backends for PyTorch's ring, tried in order until one runs",
    )  # fmt: skip
    parser.add_argument("--native-rotate", choices=["allgather", "alltoall"], default="allgather")
    parser.add_argument(
        "--cp-comm", nargs="+", choices=CP_COMM, default=["allgather"],
        help="our CP ops' communication (simulation: each in turn; a real run: the first)",
    )  # fmt: skip
    parser.add_argument(
        "--simulate", type=int, nargs="+", metavar="P",
        help="one process plays each rank of a P-rank group in turn (no process group)",
    )  # fmt: skip
    parser.add_argument(
        "--link-gbps", type=float, default=300.0,
        help="simulation: link bandwidth per direction (GB/s) for the exposed-transfer estimate",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="append the JSON lines here (rank 0)")
    args = parser.parse_args()
    if args.simulate:
        device = torch.device(args.device)
        if device.type == "cuda":
            torch.cuda.set_device(0)
        simulate(args, device)
        return

    cuda = args.device == "cuda"
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    group = dist.group.WORLD
    dtype = torch.bfloat16 if cuda else torch.float32
    bs, kk = args.block_size, args.block_count
    if rank == 0 and not cuda:
        print(f"PyTorch native context_parallel: {NATIVE_CPU_SKIP}")

    rows = []
    for seq_len in args.seqlens:
        gen = torch.Generator(device="cpu").manual_seed(seq_len)
        host = [torch.randn(1, seq_len, h, args.head_dim, generator=gen) for h in
                (args.heads, args.kv_heads, args.kv_heads)]  # fmt: skip
        one: dict[str, Any] = {}
        if rank == 0:  # single-GPU times on rank 0 while the others wait at the barrier of the next timing
            for name, attention in (
                ("full_1gpu", ssa_kernels.full_attention),
                ("ssa_1gpu", one_gpu_ssa(bs, kk)),
            ):
                whole = [t.to(device, dtype, copy=True).requires_grad_() for t in host]
                one[f"{name}_ms"], one[f"{name}_peak_gib"] = measure(
                    fwd_bwd(attention, *whole), args.repeats, device, collective=False
                )
                del whole
        local = [
            split_sequence(t, rank, world, dim=1, block_size=bs).to(device, dtype).requires_grad_()
            for t in host
        ]

        def cp_both(a, b, c):
            return [
                o for o, _ in context_parallel_ssa_attention(a, b, c, bs, kk, group, comm=args.cp_comm[0])
            ]

        def cp_full(a, b, c):
            return context_parallel_full_attention(a, b, c, group, comm=args.cp_comm[0])

        cp: dict[str, Any] = {}
        for name, attention in (("full_cp", cp_full), ("ssa_cp", cp_both)):
            run = fwd_bwd(attention, *local)
            cp[f"{name}_ms"], peak = measure(run, args.repeats, device)
            cp[f"{name}_peak_gib"] = per_rank(peak, device)
            cp[f"{name}_profile"] = profiled(run, device)
        del local, run
        native = native_baseline(host, args, device, rank)
        if rank == 0:
            rows.append({
                "device": torch.cuda.get_device_name() if cuda else "cpu", "gpus": world,
                "date": datetime.date.today().isoformat(), "git": git_commit(),
                "torch": torch.__version__, "seqlen": seq_len, "cp_comm": args.cp_comm[0],
                "heads": args.heads, "kv_heads": args.kv_heads,
                "block_size": bs, "block_count": kk, **one, **cp,
                "ssa_speedup": one["ssa_1gpu_ms"] / cp["ssa_cp_ms"],
                "full_speedup": one["full_1gpu_ms"] / cp["full_cp_ms"], **native,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
        del host
        if cuda:
            torch.cuda.empty_cache()
    if rank == 0:
        print_tables(rows)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
