"""Benchmark of the SSA attention ops on one GPU: selection, sparse fwd / fwd+bwd, full fwd+bwd vs cuDNN SDPA.

    python tools/bench_attention.py                      # 8K/32K/64K/128K, batch x length = 65,536 tokens
    python tools/bench_attention.py --seqlens 8192 --append docs/perf/bench_attention.jsonl
    python tools/bench_attention.py --tune fwd dq --seqlens 65536  # sweep launch parameters (all: --tune)
    python tools/bench_attention.py --alignment          # the alignment loss: Triton vs reference, fwd+bwd
    python tools/bench_attention.py --sink --seqlens 8192  # block 0 an attention sink, every token selects it
    python tools/bench_attention.py --model 40m --seqlens 2048 [--tune]  # the 40M model's attention at 2K
    git archive REV kernels | tar -x -C /tmp/prev            # the kernels of another revision, then:
    python tools/bench_attention.py --baseline /tmp/prev/kernels --baseline-name REV

Shape (`--model 1b`, the 1B model's attention): bf16, 32 query heads, 2 kv heads, head dim 64, block size
16, 16 blocks; `--model 40m`: 8 query heads, 2 kv heads, 8 blocks. Every length runs with batch = 65,536 /
length (2K x 32, 8K x 8, 32K x 2, 64K x 1; 128K x 1). Times are medians of
CUDA-event timings (`triton.testing.do_bench`). `sparse_fwd_bwd_ms` includes the selection; `cudnn_fwd_bwd_ms`
is plain `F.scaled_dot_product_attention` restricted to the cuDNN backend, in the same process. With
`--baseline`, the selection and sparse fwd+bwd of another copy of `ssa_kernels` (e.g. the previous revision's)
are timed in the same process on the same inputs (`baseline_*` fields, and how many selection rows both give
identically). `--sink` makes block 0 an attention sink, as trained models have: one shared direction added
to every query and to block 0's keys, so every token of a sequence selects block 0 and its dk/dv gathers them
all (with random inputs the early blocks gather only some times more tokens than the late ones).
`--alignment` times `ssa_kernels.alignment_loss` instead, at one layer's branch outputs of the 1B and the 40M
model (`ALIGNMENT_SHAPES`), on both of its backends.
"""

import argparse
import datetime
import functools
import importlib.util
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import ssa_kernels
import torch
import torch.nn.functional as F
import triton
from bench_info import git_commit
from ssa_kernels import full_attention, select_blocks, sparse_attention
from ssa_kernels.alignment_loss import AlignmentLoss
from ssa_kernels.select_blocks.parallel import select_blocks_fwd
from ssa_kernels.sparse_attention.parallel import sparse_attention_bwd, sparse_attention_fwd
from torch.nn.attention import SDPBackend, sdpa_kernel

TOKENS = 65_536  # batch x length of every run


class AttentionShape(NamedTuple):
    """One model's attention: query heads, kv heads, head dim, block size, block count."""

    heads: int
    kv_heads: int
    dim: int
    block_size: int
    block_count: int


MODELS = {"1b": AttentionShape(32, 2, 64, 16, 16), "40m": AttentionShape(8, 2, 64, 16, 8)}
"""`--model`: the attention of configs/model/1b.yaml and 40m.yaml with their recipes' block size and count."""


def bench(fn: Callable[[], object], rep_ms: int = 1000) -> float:
    """Median milliseconds of `fn` over `rep_ms` of repeats after warm-up."""
    return triton.testing.do_bench(fn, warmup=100, rep=rep_ms, return_mode="median")


def kernel_times(fn: Callable[[], object], iters: int = 10) -> dict[str, float]:
    """Mean milliseconds per call of the GPU kernels `fn` launches (torch.profiler), summed by the first 60
    characters of the kernel name (PyTorch's elementwise kernels share them)."""
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None) or getattr(
            event, "self_cuda_time_total", 0
        )
        if device_us > 0:
            times[event.key[:60]] = times.get(event.key[:60], 0.0) + device_us / iters / 1000
    return dict(sorted(times.items(), key=lambda item: -item[1]))


def cudnn_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain causal GQA SDPA, cuDNN backend: q `[B, T, HQ, D]`, k/v `[B, T, HKV, D]` -> `[B, HQ, T, D]`."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        except RuntimeError:  # the cuDNN backend without GQA support: expand k, v as full_attention does
            group = q.shape[1] // k.shape[1]
            k, v = (x.repeat_interleave(group, dim=1) for x in (k, v))
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def load_baseline(package_dir: Path) -> ModuleType:
    """Import another copy of the `ssa_kernels` package (its `kernels/` folder) as `baseline_ssa_kernels`."""
    spec = importlib.util.spec_from_file_location(
        "baseline_ssa_kernels", package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"--baseline {package_dir}: no __init__.py of an ssa_kernels copy there")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def provenance() -> dict[str, object]:
    """The fields every record starts with: device, time, commit, torch and triton versions."""
    return {
        "device": torch.cuda.get_device_name(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }


def emit(record: dict[str, object], append: Path | None) -> None:
    """Print one record as a JSON line, and append it to `append` when given."""
    print(json.dumps(record), flush=True)
    if append:
        with append.open("a") as f:
            f.write(json.dumps(record) + "\n")


def print_table(title: str, columns: list[str], records: list[dict[str, object]], digits: int) -> None:
    """The records' `columns` as a markdown table under `title`; floats with `digits` decimals."""
    print(f"\n{title}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for record in records:
        cells = (
            f"{record[c]:.{digits}f}" if isinstance(record[c], float) else str(record[c]) for c in columns
        )
        print("| " + " | ".join(cells) + " |")


SINK_STRENGTH = 4.0
"""--sink: the shared unit direction's weight in the queries and in block 0's keys (score ~16 against the
random blocks' ~N(0, 2) at D = 64, BS = 16)."""


def random_inputs(shape: AttentionShape, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 q `[B, T, HQ, D]`, k and v `[B, T, HKV, D]`, standard normal, batch `TOKENS // seq_len`."""
    batch = max(1, TOKENS // seq_len)
    q = torch.randn(batch, seq_len, shape.heads, shape.dim, device="cuda", dtype=torch.bfloat16)
    k, v = (
        torch.randn(batch, seq_len, shape.kv_heads, shape.dim, device="cuda", dtype=torch.bfloat16)
        for _ in range(2)
    )
    return q, k, v


def run(
    shape: AttentionShape, seq_len: int, baseline: ModuleType | None = None, sink: bool = False
) -> dict[str, object]:
    """Time every op at `seq_len` with batch `TOKENS // seq_len` (and the `baseline` copy's selection and
    sparse fwd+bwd); returns one JSON record."""
    block_size, block_count = shape.block_size, shape.block_count
    q, k, v = random_inputs(shape, seq_len)
    batch = q.shape[0]
    if sink:
        direction = F.normalize(torch.randn(shape.dim, device="cuda"), dim=0).bfloat16() * SINK_STRENGTH
        q += direction
        k[:, :block_size] += direction
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    do = torch.randn_like(q)
    indices = select_blocks(q, k, block_size, block_count)

    def sparse_fwd_bwd(ops: ModuleType = ssa_kernels) -> None:
        idx = ops.select_blocks(q, k, block_size, block_count)
        o, _ = ops.sparse_attention(q, k, v, idx, block_size)
        torch.autograd.grad(o, (q, k, v), do)

    def full_fwd_bwd() -> None:
        o, _ = full_attention(q, k, v)
        torch.autograd.grad(o, (q, k, v), do)

    def cudnn_fwd_bwd() -> None:
        torch.autograd.grad(cudnn_sdpa(q, k, v), (q, k, v), do.transpose(1, 2))

    with torch.no_grad():
        select_ms = bench(lambda: select_blocks(q, k, block_size, block_count))
        sparse_fwd_ms = bench(lambda: sparse_attention(q, k, v, indices, block_size))
        sparse_fwd_sel_ms = bench(
            lambda: sparse_attention(q, k, v, select_blocks(q, k, block_size, block_count), block_size)
        )
        full_fwd_ms = bench(lambda: full_attention(q, k, v))
        cudnn_fwd_ms = bench(lambda: cudnn_sdpa(q, k, v))
    record = {
        **provenance(),
        "seqlen": seq_len,
        "batch": batch,
        **shape._asdict(),
        "selection": "sink" if sink else "random",
        "select_ms": select_ms,
        "select_kernels_ms": kernel_times(lambda: select_blocks(q, k, block_size, block_count)),
        "sparse_fwd_ms": sparse_fwd_ms,
        "sparse_fwd_with_select_ms": sparse_fwd_sel_ms,
        "sparse_fwd_bwd_ms": bench(sparse_fwd_bwd),
        "sparse_fwd_bwd_kernels_ms": kernel_times(sparse_fwd_bwd),
        "full_fwd_ms": full_fwd_ms,
        "cudnn_fwd_ms": cudnn_fwd_ms,
        "full_fwd_bwd_ms": bench(full_fwd_bwd),
        "cudnn_fwd_bwd_ms": bench(cudnn_fwd_bwd),
    }
    if baseline is not None:
        with torch.no_grad():
            record["baseline_select_ms"] = bench(
                lambda: baseline.select_blocks(q, k, block_size, block_count)
            )
            baseline_indices = baseline.select_blocks(q, k, block_size, block_count)
        record["baseline_select_equal_rows"] = (baseline_indices == indices).all(-1).float().mean().item()
        record["baseline_sparse_fwd_bwd_ms"] = bench(functools.partial(sparse_fwd_bwd, baseline))
    return record


TUNE_GRIDS = {
    "select": {"tile_rows": [32, 64, 128], "tile_blocks": [32, 64, 128], "num_warps": [4, 8]},
    "fwd": {"keys": [16, 32, 64, 128], "warps": [1, 2, 4], "stages": [2, 3, 4]},
    "dq": {"dq_keys": [16, 32, 64, 128], "dq_warps": [1, 2, 4], "dq_stages": [2, 3, 4]},
    "dkdv": {"dkdv_rows": [32, 64, 128], "dkdv_warps": [4, 8], "dkdv_stages": [1, 2, 3]},
}
"""Launch parameters `--tune` sweeps, per kernel (the keyword arguments of its launcher)."""


ALIGNMENT_SHAPES = {"1b-8k": (1, 8192, 32, 64), "40m-2k": (32, 2048, 8, 64)}
"""One layer's attention output `[B, T, HQ, D]` (bf16): the 1B model at 8,192 tokens, micro-batch 1; the
40M model at 2,048 tokens, micro-batch 32."""


def alignment(name: str, shape: tuple[int, ...]) -> dict[str, object]:
    """Fwd+bwd of the alignment loss (both weights 1) on bf16 branch outputs of `shape`: the Triton kernels
    and the reference (fp32 copies, PyTorch ops) of `ssa_kernels.alignment_loss`; one JSON record.
    `triton_gbps`: the bytes the kernels must move (each input read twice, both gradients written once) per
    second of the Triton fwd+bwd."""
    full = torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    sparse = (full.detach() + torch.randn_like(full)).requires_grad_()

    def fwd_bwd(fast: bool) -> None:
        loss, _ = AlignmentLoss.apply(full, sparse, 1.0, 1.0, fast)
        torch.autograd.grad(loss, (full, sparse))

    with torch.no_grad():
        triton_fwd_ms = bench(lambda: AlignmentLoss.apply(full, sparse, 1.0, 1.0, True))
    triton_ms = bench(lambda: fwd_bwd(True))
    return {
        "op": "alignment_loss",
        **provenance(),
        "shape_name": name,
        "shape": list(shape),
        "dtype": "bf16",
        "reference_fwd_bwd_ms": bench(lambda: fwd_bwd(False)),
        "reference_kernels_ms": kernel_times(lambda: fwd_bwd(False)),
        "triton_fwd_bwd_ms": triton_ms,
        "triton_fwd_ms": triton_fwd_ms,
        "triton_kernels_ms": kernel_times(lambda: fwd_bwd(True)),
        "triton_gbps": 6 * full.numel() * full.element_size() / triton_ms / 1e6,
    }


def tune(shape: AttentionShape, seq_len: int, kernels: list[str]) -> list[dict[str, object]]:
    """Time each kernel's launcher over its `TUNE_GRIDS` settings: the selection (also counting rows that
    change: near-ties flip with the score tile), the sparse forward, the backward (dq or dk/dv varied)."""
    block_size, block_count = shape.block_size, shape.block_count
    q, k, v = random_inputs(shape, seq_len)
    batch = q.shape[0]
    scale = shape.dim**-0.5
    reference = select_blocks_fwd(q, k, block_size, block_count, scale)
    o, lse = sparse_attention_fwd(q, k, v, reference, block_size, scale)
    do = torch.randn_like(o)
    launchers = {
        "select": functools.partial(select_blocks_fwd, q, k, block_size, block_count, scale),
        "fwd": functools.partial(sparse_attention_fwd, q, k, v, reference, block_size, scale),
        "dq": functools.partial(
            sparse_attention_bwd, q, k, v, reference, o, lse, do, None, block_size, scale
        ),
    }
    launchers["dkdv"] = launchers["dq"]
    base = {
        "device": torch.cuda.get_device_name(),
        "git": git_commit(),
        "seqlen": seq_len,
        "batch": batch,
        **shape._asdict(),
    }
    records = []
    for kernel in kernels:
        grid = TUNE_GRIDS[kernel]
        for values in itertools.product(*grid.values()):
            setting = dict(zip(grid, values, strict=True))
            fn = functools.partial(launchers[kernel], **setting)
            record = {**base, "kernel": kernel, **setting}
            try:
                if kernel == "select":
                    record["equal_rows"] = (fn() == reference).all(-1).float().mean().item()
                record["ms"] = bench(fn, rep_ms=300)
            except Exception as error:  # a setting that does not compile or fit is a result too
                record["error"] = f"{type(error).__name__}: {str(error)[:200]}"
            print(json.dumps(record), flush=True)
            records.append(record)
    return records


def alignment_table(append: Path | None) -> None:
    """Time the alignment loss at every `ALIGNMENT_SHAPES` entry: a JSON line each (appended to `append`
    too), then a markdown table."""
    records = []
    for name, shape in ALIGNMENT_SHAPES.items():
        records.append(alignment(name, shape))
        torch.cuda.empty_cache()
        emit(records[-1], append)
    columns = ["shape_name", "reference_fwd_bwd_ms", "triton_fwd_bwd_ms", "triton_fwd_ms", "triton_gbps"]
    title = f"{records[0]['device']}, alignment loss, bf16 [B, T, HQ, D], ms (median)"
    print_table(title, columns, records, digits=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[8192, 32768, 65536, 131072])
    parser.add_argument("--append", type=Path, help="JSON-lines file to append the records to")
    parser.add_argument(
        "--tune",
        nargs="*",
        choices=list(TUNE_GRIDS),
        help="sweep the launch parameters of these kernels instead (all when none named; JSON lines)",
    )
    parser.add_argument(
        "--baseline", type=Path, help="another copy of ssa_kernels (a kernels/ folder) to time"
    )
    parser.add_argument("--baseline-name", default="baseline", help="what the baseline is (e.g. its commit)")
    parser.add_argument(
        "--alignment", action="store_true", help="time the alignment loss at ALIGNMENT_SHAPES instead"
    )
    parser.add_argument("--sink", action="store_true", help="make block 0 an attention sink (every token's)")
    parser.add_argument("--model", choices=list(MODELS), default="1b", help="whose attention shape (MODELS)")
    args = parser.parse_args()
    shape = MODELS[args.model]
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention needs a CUDA GPU")
    if args.alignment:
        alignment_table(args.append)
        return
    if args.tune is not None:
        for seq_len in args.seqlens:
            tune(shape, seq_len, args.tune or list(TUNE_GRIDS))
        return
    baseline = load_baseline(args.baseline) if args.baseline else None
    columns = [
        "seqlen",
        "batch",
        "selection",
        "select_ms",
        "sparse_fwd_ms",
        "sparse_fwd_with_select_ms",
        "sparse_fwd_bwd_ms",
    ]
    columns += ["full_fwd_ms", "cudnn_fwd_ms", "full_fwd_bwd_ms", "cudnn_fwd_bwd_ms"]
    if baseline is not None:
        columns += ["baseline_select_ms", "baseline_sparse_fwd_bwd_ms"]
    records = []
    for seq_len in args.seqlens:
        try:
            record = run(shape, seq_len, baseline, args.sink)
            if baseline is not None:
                record["baseline"] = args.baseline_name
            torch.cuda.empty_cache()
        except torch.OutOfMemoryError:
            print(f"seqlen {seq_len}: out of GPU memory, skipped")
            torch.cuda.empty_cache()
            continue
        records.append(record)
        emit(record, args.append)
    title = (
        f"{records[0]['device'] if records else ''}, bf16, HQ={shape.heads}, HKV={shape.kv_heads}, "
        f"D={shape.dim}, BS={shape.block_size}, K={shape.block_count}, ms (median)"
    )
    print_table(title, columns, records, digits=2)


if __name__ == "__main__":
    main()
