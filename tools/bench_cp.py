"""One layer's SSA attention, forward + backward, on one GPU and context-parallel over all GPUs of the job.

Per sequence length: the single-GPU time of cuDNN full attention (the baseline) and of SSA training attention
(both branches, `ssa_kernels`), and the context-parallel time of the same SSA attention (ring over all ranks:
`context_parallel_ssa_attention`) and of full attention alone (`context_parallel_full_attention`). Speed-up =
single-GPU SSA time / CP SSA time; the issue's target is >= 1.85x at 64K and >= 1.9x at 128K on 2 GPUs.
Shape: bf16, 32 query heads, 2 kv heads, head dim 64, block size 16, 16 blocks, batch 1.

    torchrun --nproc-per-node 2 tools/bench_cp.py --seqlens 65536 131072 --out docs/perf/bench_cp.jsonl
    torchrun --nproc-per-node 2 tools/bench_cp.py --device cpu --seqlens 1024 --heads 4 --kv-heads 2  # smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import ssa_kernels
import torch
import torch.distributed as dist

from ssa_pretrain.parallel import (
    context_parallel_full_attention,
    context_parallel_ssa_attention,
    split_sequence,
)


def timed(fn: Callable[[], None], repeats: int, device: torch.device, collective: bool = True) -> float:
    """Median milliseconds of `fn` after one warm-up; `collective`: all ranks call it, in step."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(repeats + 1):
        if collective:
            dist.barrier()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def fwd_bwd(attention: Callable[..., tuple], q, k, v) -> Callable[[], None]:
    """A closure running `attention(q, k, v)` forward and backward (outputs summed as the loss)."""

    def run() -> None:
        for t in (q, k, v):
            t.grad = None
        outputs = attention(q, k, v)
        loss = sum(o.float().sum() for o in outputs)
        loss.backward()

    return run


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
    parser.add_argument("--out", type=Path, help="append the JSON lines here (rank 0)")
    args = parser.parse_args()

    cuda = args.device == "cuda"
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    group = dist.group.WORLD
    dtype = torch.bfloat16 if cuda else torch.float32
    bs, kk = args.block_size, args.block_count

    rows = []
    for seq_len in args.seqlens:
        gen = torch.Generator(device="cpu").manual_seed(seq_len)

        def tensor(heads: int, gen=gen, seq_len=seq_len) -> torch.Tensor:
            return torch.randn(1, seq_len, heads, args.head_dim, generator=gen).to(device, dtype)

        q, k, v = tensor(args.heads), tensor(args.kv_heads), tensor(args.kv_heads)
        one = {}
        if rank == 0:  # single-GPU times on rank 0 while the others wait at the barrier of the next timing

            def both(a, b, c):
                idx = ssa_kernels.select_blocks(a, b, bs, kk)
                return ssa_kernels.full_attention(a, b, c)[0], ssa_kernels.sparse_attention(a, b, c, idx, bs)[
                    0
                ]

            for name, attention in (("full_1gpu_ms", ssa_kernels.full_attention), ("ssa_1gpu_ms", both)):
                whole = [t.clone().requires_grad_() for t in (q, k, v)]
                one[name] = timed(fwd_bwd(attention, *whole), args.repeats, device, collective=False)
        local = [split_sequence(t, rank, world, dim=1, block_size=bs).requires_grad_() for t in (q, k, v)]

        def cp_both(a, b, c):
            return [o for o, _ in context_parallel_ssa_attention(a, b, c, bs, kk, group)]

        def cp_full(a, b, c):
            return context_parallel_full_attention(a, b, c, group)

        cp_full_ms = timed(fwd_bwd(cp_full, *local), args.repeats, device)
        cp_ssa_ms = timed(fwd_bwd(cp_both, *local), args.repeats, device)
        if rank == 0:
            rows.append({
                "device": torch.cuda.get_device_name() if cuda else "cpu", "gpus": world,
                "date": datetime.date.today().isoformat(), "git": os.environ.get("GIT_COMMIT", ""),
                "seqlen": seq_len, "heads": args.heads, "kv_heads": args.kv_heads, "block_size": bs,
                "block_count": kk, **one, "full_cp_ms": cp_full_ms, "ssa_cp_ms": cp_ssa_ms,
                "ssa_speedup": one["ssa_1gpu_ms"] / cp_ssa_ms,
                "full_speedup": one["full_1gpu_ms"] / cp_full_ms,
            })  # fmt: skip
        del q, k, v, local
        if cuda:
            torch.cuda.empty_cache()
    if rank == 0:
        print(f"{'seqlen':>8} {'full 1':>9} {'full CP':>9} {'SSA 1':>9} {'SSA CP':>9} {'SSA x':>6}")
        for r in rows:
            print(f"{r['seqlen']:8d} {r['full_1gpu_ms']:9.1f} {r['full_cp_ms']:9.1f} {r['ssa_1gpu_ms']:9.1f} "
                  f"{r['ssa_cp_ms']:9.1f} {r['ssa_speedup']:6.2f}")  # fmt: skip
        for r in rows:
            print(json.dumps(r))
        if args.out:
            with args.out.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
