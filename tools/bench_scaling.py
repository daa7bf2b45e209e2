"""Training-step scaling of SSA over the GPUs of one host: context-, tensor- and data-parallel layouts.

Real optimizer steps through the project's `Trainer` (Megatron GPT with the SSA spec inside the DeepSpeed
engine, ZeRO over data x context parallel, data from packed shards), per sequence length:

* step time: median of `--steps` steps after `--warmup` steps (the Trainer's own `step_time_s`); tokens/s =
  global batch x seq_len / step time, also per GPU; MFU as the Trainer computes it;
* peak memory: the largest of all ranks (GPU: max allocated; CPU: peak RSS);
* the loss of every step (the Trainer's `loss`, CE + alignment, mean over the global batch) and the attention
  mode of every sequence, so that `--compare` can set a layout against the one-GPU run;
* communication, from one extra step under `torch.profiler` (none on one process: nothing to count). Counted
  as communication: on GPU every device kernel whose name contains "nccl" (NCCL's send/recv, all-reduce,
  all-gather, reduce-scatter kernels: the ring's K/V and dK/dV shifts, the block-mean all-gathers, TP
  all-reduces, the ZeRO gradient reduce and parameter gather; a kernel waiting for its peer counts as busy);
  on CPU every profiler event named `gloo:*`. `comm_share` = time during which at least one of them runs
  (union of their intervals) / step time; `exposed_comm_share` = the part of that time in which no compute
  runs (GPU: no other kernel; CPU: no `aten::` op) — communication the step waited for; `compute_share` =
  union of the compute intervals / step time. All three are means over ranks.

Layouts of N processes: `cp` = CP N; `tp2-cp` = TP 2 x CP N/2; `dp2-cp` = DP 2 x CP N/2. Every layout runs the
same global batch (`--global-batch`, default 2 sequences; one per micro-step, 2 / DP micro-steps per rank), so
layouts differ only in how the same work is spread. Data: the bundled corpus as `bench-<seq_len>` shards under
`--data-root` with the default tokenizer, written by rank 0 when missing (one host: a shared file system).

    python tools/bench_scaling.py --seqlens 32768 train.recompute=full --out one.jsonl   # 1-GPU baseline
    torchrun --nproc-per-node 8 tools/bench_scaling.py --layout cp --out docs/perf/bench_scaling.jsonl
    python tools/bench_scaling.py --compare one.jsonl docs/perf/bench_scaling.jsonl    # first 5 losses
    torchrun --nproc-per-node 2 tools/bench_scaling.py --model configs/model/tiny.yaml --seqlens 256 \\
        --vocab-size 0 --layout tp2-cp                                                  # CPU dry run, gloo
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from bench_info import run_info
from scaling_model import LAYOUTS, layout_sizes
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ssa_pretrain.config import Config, load_config
from ssa_pretrain.data.prepare import DEFAULT_BUILD_DIR, default_corpus, prepare_default
from ssa_pretrain.data.shards import write_shards
from ssa_pretrain.distributed import init_distributed, read_env, shutdown
from ssa_pretrain.model.modes import choose_mode
from ssa_pretrain.trainer import Trainer


def bench_config(args: argparse.Namespace, seq_len: int, tp: int, cp: int) -> Config:
    """The run config of one measurement: the model file + the layout, batch and data of the benchmark, then
    the user's dotted overrides (which win)."""
    return load_config(
        args.model,
        [
            f"parallel.tp={tp}",
            f"parallel.cp={cp}",
            f"data.seq_len={seq_len}",
            f"data.dir={args.data_root / f'bench-{seq_len}'}",
            f"data.tokenizer={args.data_root / 'default' / 'tokenizer'}",
            "train.steps=1000",  # the schedule of a 1000-step run, whatever --steps: lines compare
            "train.micro_batch_size=1",
            f"train.global_batch_size={args.global_batch}",
            *([f"model.vocab_size={args.vocab_size}"] if args.vocab_size else []),
            "logging.wandb=disabled",
            "logging.progress=false",
            *args.overrides,
        ],
    )


def prepare_data(seq_len: int, data_root: Path) -> None:
    """`data_root/bench-<seq_len>/train`: the bundled corpus in `seq_len + 1`-token samples (no valid split:
    one corpus holds only ~11 samples of 128K), tokenized with `data_root/default/tokenizer`; the default
    dataset (and its tokenizer) is prepared first when missing. Skipped when present."""
    out = data_root / f"bench-{seq_len}"
    if (out / "train" / "manifest.json").is_file():
        return
    tokenizer = data_root / "default" / "tokenizer"
    if not (tokenizer / "tokenizer.model").is_file():
        prepare_default(data_root / "default")
    write_shards([default_corpus()], tokenizer, out, seq_len, valid_fraction=0.0, progress=False)


def sequence_modes(cfg: Config, step: int, dp: int) -> list[str]:
    """The attention mode each sequence of the global batch saw at optimizer step `step`: sequence `j` is in
    micro-batch `j // micro_batch_size`, which data-parallel rank `(j // micro) % dp` runs at micro-step
    `(j // micro) // dp` (the loader's order)."""
    micro = cfg.train.micro_batch_size
    accum = cfg.train.global_batch_size // (micro * dp)
    return [
        choose_mode(cfg.ssa, cfg.train.seed, step, (j // micro) // dp, accum)
        for j in range(cfg.train.global_batch_size)
    ]


# ------------------------------------------------------------------------------------- communication


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Disjoint, sorted cover of the `(start, end)` intervals."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _minus(cover: list[tuple[float, float]], holes: list[tuple[float, float]]) -> float:
    """Length of `cover` outside `holes` (both from `_union`)."""
    overlap, i = 0.0, 0
    for start, end in cover:
        while i < len(holes) and holes[i][1] <= start:
            i += 1
        j = i
        while j < len(holes) and holes[j][0] < end:
            overlap += min(end, holes[j][1]) - max(start, holes[j][0])
            j += 1
    return _length(cover) - overlap


def communication_shares(events: Iterable[Any], step_us: float, cuda: bool) -> dict[str, float]:
    """`comm_share`, `exposed_comm_share`, `compute_share` of one profiled step (module docstring).

    `events`: the profiler's `FunctionEvent`s (name, device_type, time_range in µs)."""
    comm, compute = [], []
    for e in events:
        span = (e.time_range.start, e.time_range.end)
        if cuda and e.device_type == DeviceType.CUDA:
            (comm if "nccl" in e.name.lower() else compute).append(span)
        elif not cuda and e.name.startswith("gloo:"):
            comm.append(span)
        elif not cuda and e.name.startswith("aten::"):
            compute.append(span)
    comm_cover, compute_cover = _union(comm), _union(compute)
    return {
        "comm_share": _length(comm_cover) / step_us,
        "exposed_comm_share": _minus(comm_cover, compute_cover) / step_us,
        "compute_share": _length(compute_cover) / step_us,
    }


def profiled_step(trainer: Trainer) -> dict[str, float]:
    """One more training step under `torch.profiler`; its time and communication shares, mean over ranks."""
    cuda = trainer.dist.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        metrics = trainer.train_step()
    trainer.step += 1
    shares = communication_shares(prof.events(), metrics["step_time_s"] * 1e6, cuda)
    values = torch.tensor([metrics["step_time_s"] * 1e3, *shares.values()], device=trainer.dist.device)
    dist.all_reduce(values)
    mean = (values / dist.get_world_size()).tolist()
    return {"profile_step_ms": mean[0], **dict(zip(shares, mean[1:], strict=True))}


# ------------------------------------------------------------------------------------------- measuring


def measure(trainer: Trainer, warmup: int, steps: int) -> dict[str, Any]:
    """`warmup + steps` training steps, + one profiled step on more than one process; a line's numbers."""
    cfg, world = trainer.cfg, trainer.dist.world_size
    metrics, modes = [], []
    for _ in range(warmup + steps):
        modes.append(sequence_modes(cfg, trainer.step, trainer.dp))
        metrics.append(trainer.train_step())
        trainer.step += 1
    timed = sorted(metrics[warmup:], key=lambda m: m["step_time_s"])
    median = timed[len(timed) // 2]
    peak = torch.tensor([max(m["peak_mem_gib"] for m in metrics)], device=trainer.dist.device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return {
        "step_ms": median["step_time_s"] * 1e3,
        "step_ms_all": [m["step_time_s"] * 1e3 for m in metrics],
        "tokens_per_s": median["tokens_per_s"],
        "tokens_per_s_per_gpu": median["tokens_per_s"] / world,
        "mfu": median.get("mfu"),
        "peak_mem_gib": peak.item(),
        "losses": [m["loss"] for m in metrics],
        "ce": [m["ce"] for m in metrics],
        "sequence_modes": modes,
        **(profiled_step(trainer) if world > 1 else {}),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every sequence length of `args` (in the given order) in the layout of `args`. Rank 0 prints each line
    and appends it to `--out` as soon as it is measured (a later length that runs out of memory keeps the
    earlier ones); returns the lines."""
    world = read_env().world_size
    tp, cp, dp = layout_sizes(args.layout, world)
    configs = {seq_len: bench_config(args, seq_len, tp, cp) for seq_len in args.seqlens}
    env = init_distributed(tp, cp)
    if env.rank == 0:
        for seq_len, cfg in configs.items():
            if cfg.data.dir == str(args.data_root / f"bench-{seq_len}"):  # not overridden
                prepare_data(seq_len, args.data_root)
    dist.barrier()
    rows = []
    for seq_len, cfg in configs.items():
        if env.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(cfg, args.run_dir / f"{args.layout}-{world}-{seq_len}")
        numbers = measure(trainer, args.warmup, args.steps)
        rows.append({
            **run_info(args.model), "layout": args.layout, "world_size": world, "tp": tp, "cp": cp, "dp": dp,
            "seqlen": seq_len, "global_batch": cfg.train.global_batch_size,
            "micro_batch": cfg.train.micro_batch_size, "grad_accum": trainer.grad_accum,
            "variant": cfg.ssa.variant, "full_ratio": cfg.ssa.full_ratio, "block_size": cfg.ssa.block_size,
            "block_count": cfg.ssa.block_count, "recompute": cfg.train.recompute,
            "cp_comm": cfg.parallel.cp_comm, "bf16": trainer.bf16, "params": trainer.num_params,
            "warmup": args.warmup, "steps": args.steps, "overrides": args.overrides, **numbers,
        })  # fmt: skip
        if env.rank == 0:
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
        trainer.logger.close()
        del trainer
        if env.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'layout':7} {'GPUs':>4} {'seqlen':>7} {'step ms':>9} {'tokens/s':>9} {'tok/s/GPU':>9} "
          f"{'peak GiB':>8} {'comm':>5} {'exposed':>7}  first losses")  # fmt: skip
    for r in rows:
        comm = f"{r['comm_share']:5.0%}" if "comm_share" in r else "    -"
        exposed = f"{r['exposed_comm_share']:7.0%}" if "exposed_comm_share" in r else "      -"
        losses = " ".join(f"{x:.4f}" for x in r["losses"][:5])
        print(f"{r['layout']:7} {r['world_size']:4d} {r['seqlen']:7d} {r['step_ms']:9.1f} "
              f"{r['tokens_per_s']:9.0f} {r['tokens_per_s_per_gpu']:9.0f} {r['peak_mem_gib']:8.1f} "
              f"{comm} {exposed}  {losses}")  # fmt: skip


# ------------------------------------------------------------------------------------------- comparing

_SAME_RUN = ("config", "seqlen", "global_batch", "micro_batch", "variant", "full_ratio", "block_size",
             "block_count", "params", "bf16")  # fmt: skip


def compare(reference: list[dict], others: list[dict], first: int, rtol: float) -> list[dict[str, Any]]:
    """Each line of `others` against the line of `reference` with the same model, length and batch: the
    largest relative difference of the first `first` losses. Lines whose sequences saw other attention
    modes in those steps (e.g. DP=2 against accumulation on one GPU) are not comparable."""
    results = []
    for other in others:
        matches = [r for r in reference if all(r.get(k) == other.get(k) for k in _SAME_RUN)]
        result = {k: other.get(k) for k in ("layout", "world_size", "seqlen")}
        if not matches:
            results.append({**result, "verdict": "no reference line with the same model, length and batch"})
            continue
        ref = matches[-1]
        if len(ref["losses"]) < first or len(other["losses"]) < first:
            results.append({**result, "verdict": f"fewer than {first} losses"})
        elif ref["sequence_modes"][:first] != other["sequence_modes"][:first]:
            results.append({**result, "verdict": "not comparable: other attention modes per sequence"})
        else:
            pairs = zip(ref["losses"][:first], other["losses"][:first], strict=True)
            diff = max(abs(a - b) / abs(a) for a, b in pairs)
            verdict = "match" if diff <= rtol else f"DIFFER (rtol {rtol:g})"
            results.append({**result, "max_rel_diff": diff, "verdict": verdict})
    return results


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="configs/model/1b.yaml", help="model (or run) config")
    parser.add_argument("--layout", choices=LAYOUTS, default="cp")
    parser.add_argument("--seqlens", type=int, nargs="+", default=[32768, 65536, 131072])
    parser.add_argument("--global-batch", type=int, default=2, help="sequences per step, in every layout")
    parser.add_argument(
        "--vocab-size", type=int, default=128256, help="1B release's Llama-3 vocabulary; 0: the tokenizer's"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (their losses are kept)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_BUILD_DIR.parent)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-scaling"))
    parser.add_argument("--out", type=Path, help="append the JSON lines here (rank 0)")
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("REFERENCE", "OTHER"),
        help="compare the first losses of OTHER's lines with REFERENCE's (e.g. the 1-GPU run); no training",
    )  # fmt: skip
    parser.add_argument("--first", type=int, default=5, help="--compare: losses compared")
    parser.add_argument("--rtol", type=float, default=1e-2, help="--compare: relative tolerance (bf16)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.recompute=full")
    args = parser.parse_intermixed_args()  # overrides may come before options

    if args.compare:
        results = compare(*(_read_jsonl(p) for p in args.compare), args.first, args.rtol)
        for r in results:
            diff = f"{r['max_rel_diff']:.2e}" if "max_rel_diff" in r else "-"
            print(f"{r['layout']:7} {r['world_size']:4d} {r['seqlen']:7d} {diff:>9}  {r['verdict']}")
        sys.exit(0 if results and all(r["verdict"] == "match" for r in results) else 1)

    rows = run(args)
    if dist.get_rank() == 0:
        print_table(rows)
    shutdown()


if __name__ == "__main__":
    main()
